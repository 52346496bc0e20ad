//! A real Mosquitto broker for the tests: finding the Debian binaries (failing, not skipping,
//! when they are missing), writing a test config, starting `mosquitto -c`, waiting until it
//! listens, stopping and restarting it, and killing it when the test ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the broker may take to start listening or to stop.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Path of a Mosquitto program (`mosquitto`, `mosquitto_pub`, `mosquitto_sub`); panics naming
/// the Debian packages when it is not installed.
pub fn require(bin: &str) -> PathBuf {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
    ] {
        let p = Path::new(dir).join(bin);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{bin} not found: this test needs the Debian packages mosquitto and mosquitto-clients \
         (apt-get install mosquitto mosquitto-clients)"
    );
}

/// Whether the tests run as root (uid 0).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Config lines every hand-written test config needs: as root, mosquitto would drop to the
/// `mosquitto` user, which cannot write the persistence file or read keys in our temp dir.
pub fn base_conf() -> String {
    if is_root() {
        "user root\n".into()
    } else {
        String::new()
    }
}

/// A mosquitto process started with `mosquitto -c <conf> -v`, its log in `<conf>.log`; killed
/// (SIGKILL) and reaped on drop.
pub struct Mosquitto {
    child: Option<Child>,
    conf: PathBuf,
    port: u16,
}

impl Mosquitto {
    /// Writes [`base_conf`] followed by `lines` to `conf`, then starts the broker on it.
    pub fn with_config(conf: PathBuf, port: u16, lines: &str) -> Mosquitto {
        std::fs::write(&conf, format!("{}{lines}", base_conf())).expect("mosquitto conf");
        Mosquitto::start(conf, port)
    }

    /// Starts mosquitto on an existing config and waits until it accepts TCP connections on
    /// `127.0.0.1:port`; panics with the broker's log if it exits or does not listen in time.
    pub fn start(conf: PathBuf, port: u16) -> Mosquitto {
        Mosquitto::start_as(conf, port, None)
    }

    /// [`Mosquitto::start`], run as `user` (and its groups) from the start when given: the
    /// tests run as root, and `setpriv` execs mosquitto in place (unlike `runuser`, which stays
    /// as its parent), so killing the child kills the broker.
    pub fn start_as(conf: PathBuf, port: u16, user: Option<&str>) -> Mosquitto {
        let log = conf.with_extension("log");
        let mut cmd = match user {
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={u}"))
                    .arg(format!("--regid={u}"))
                    .arg("--init-groups")
                    .arg(require("mosquitto"));
                c
            }
            None => Command::new(require("mosquitto")),
        };
        let child = cmd
            .arg("-c")
            .arg(&conf)
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("broker log"))
            .spawn()
            .expect("start mosquitto");
        let mut b = Mosquitto {
            child: Some(child),
            conf,
            port,
        };
        let until = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = b.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("mosquitto exited ({status}):\n{}", b.log());
            }
            if Instant::now() > until {
                panic!("mosquitto did not listen on {port}:\n{}", b.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        b
    }

    /// The user the broker process runs as now (from `ps`), e.g. `mosquitto` after it dropped
    /// root.
    pub fn process_user(&self) -> Option<String> {
        let pid = self.child.as_ref()?.id();
        let out = Command::new("ps")
            .args(["-o", "user=", "-p", &pid.to_string()])
            .output()
            .ok()?;
        let user = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!user.is_empty()).then_some(user)
    }

    /// What the broker has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.conf.with_extension("log")).unwrap_or_default()
    }

    /// SIGTERM (mosquitto saves its persistence file) and wait for exit; SIGKILL after
    /// [`DEADLINE`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let until = Instant::now() + DEADLINE;
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > until {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// [`Mosquitto::stop`], then start again on the same config and port.
    pub fn restart(&mut self) {
        self.stop();
        *self = Mosquitto::start(self.conf.clone(), self.port);
    }

    /// SIGKILL now and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}
