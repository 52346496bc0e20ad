//! `medledger demo`: a whole hospital site on one machine. It makes a site CA and certificates
//! with this binary's own commands, starts an MQTT broker (Mosquitto with mutual TLS, bound to
//! loopback), three gateways as separate `medledger run` processes made one cluster, and
//! simulated pumps, ventilators and monitors on MQTT and Modbus TCP whose faults raise alarms,
//! offline devices and due maintenance; it prints how to reach the site and a summary now and
//! then, and stops everything on Ctrl-C, SIGTERM or `--duration`.

mod broker;
mod children;
mod devices;
mod site;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;

use children::Children;
use devices::SimDevices;
use site::{Layout, Transport};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Stop after this many seconds of running (for scripts); default: run until Ctrl-C or
    /// SIGTERM.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<u64>,
    /// Build the site in this (new or empty) directory and keep it afterwards; default: a
    /// temporary directory, removed at the end.
    #[arg(long, alias = "dir", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The MQTT broker: `mosquitto` (mutual TLS, per-device ACL; needs the Debian package),
    /// `embedded` (rumqttd in the demo process: plain MQTT on loopback, no authentication, for
    /// the demo only), or `auto`: Mosquitto when installed, else the embedded one.
    #[arg(long, value_enum, default_value_t = BrokerChoice::Auto)]
    pub broker: BrokerChoice,
    /// Seconds between two summary lines (entries, alarms, offline devices).
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    pub summary_every: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerChoice {
    Auto,
    Mosquitto,
    Embedded,
}

/// Gateways in the demo's cluster (three voters survive the loss of one).
const GATEWAYS: u64 = 3;

/// How long the broker and each gateway may take to start listening.
const START_WAIT: Duration = Duration::from_secs(60);

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    if args.summary_every == 0 {
        bail!("--summary-every must be at least 1");
    }
    let (root, temp) = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            let used = std::fs::read_dir(d)
                .with_context(|| format!("cannot read {}", d.display()))?
                .next()
                .is_some();
            if used {
                bail!(
                    "--data-dir {} is not empty: the demo builds a new site in a new or empty directory",
                    d.display()
                );
            }
            (std::path::absolute(d)?, None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("medledger-demo-")
                .tempdir()
                .context("cannot create a temporary directory")?;
            (t.path().to_owned(), Some(t))
        }
    };
    let layout = Layout { root };
    std::fs::create_dir_all(layout.logs_dir())?;
    println!(
        "MedLedger demo: a hospital site on this machine, in {}",
        layout.root.display()
    );

    let mut signals = Signals::new()?;
    let mut children = Children::default();
    let mut sims: Option<SimDevices> = None;
    let outcome = tokio::select! {
        r = run_site(&layout, &args, &mut children, &mut sims) => r,
        why = signals.recv() => Ok(why),
    };
    println!("Stopping the site ...");
    if let Some(s) = sims.take() {
        s.stop().await;
    }
    let killed = children.stop_all().await;
    if !killed.is_empty() {
        println!("  (had to kill {} after waiting)", killed.join(", "));
    }
    match (&outcome, temp) {
        (_, Some(t)) => {
            let p = t.path().to_owned();
            if let Err(e) = t.close() {
                eprintln!("warning: cannot remove {}: {e}", p.display());
            } else {
                println!("Removed {}.", p.display());
            }
        }
        (_, None) => println!(
            "The site is kept in {} (gateway logs in {}).",
            layout.root.display(),
            layout.logs_dir().display()
        ),
    }
    match outcome {
        Ok(why) => {
            println!("Demo stopped ({why}); no process of it is left.");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.context(format!(
            "the demo failed; logs were in {}",
            layout.logs_dir().display()
        ))),
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, handled in one place.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupted",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// Builds the site, then runs it until `--duration` has passed; returns why it ended.
async fn run_site(
    l: &Layout,
    args: &DemoArgs,
    children: &mut Children,
    sims_slot: &mut Option<SimDevices>,
) -> anyhow::Result<&'static str> {
    let all = site::devices();
    let mosquitto = match (args.broker, find_mosquitto()) {
        (BrokerChoice::Embedded, _) | (BrokerChoice::Auto, None) => None,
        (_, Some(m)) => Some(m),
        (BrokerChoice::Mosquitto, None) => {
            bail!("--broker mosquitto: mosquitto is not installed (apt-get install mosquitto)")
        }
    };

    step(
        1,
        "site CA, gateway certificates and issuing CAs (medledger ca init, cert issue --profile gateway, ca sign-issuing)",
    );
    site::make_ca_and_gateways(l, GATEWAYS).await?;

    step(
        2,
        "a certificate for each MQTT device and for a staff member (medledger cert issue)",
    );
    site::make_identities(l, &all).await?;

    // Gateway 1 sends Mosquitto SIGHUP through this file after each new CRL ([broker_crl]).
    let pid_file = l.mosquitto_dir().join("mosquitto.pid");
    let mqtt = match &mosquitto {
        Some(mosquitto) => {
            let port = site::free_port()?;
            step(
                3,
                &format!(
                    "MQTT broker: Mosquitto on 127.0.0.1:{port}, mutual TLS, ACL per device (medledger mosquitto-config)"
                ),
            );
            let conf = site::make_mosquitto_config(l, port, GATEWAYS).await?;
            let pid = children.spawn(
                "mosquitto",
                mosquitto,
                &["-c".into(), conf.display().to_string()],
                &l.logs_dir().join("mosquitto.log"),
            )?;
            std::fs::write(&pid_file, format!("{pid}\n"))
                .with_context(|| format!("cannot write {}", pid_file.display()))?;
            wait_listening(children, "mosquitto", port).await?;
            Mqtt {
                gateway_port: port,
                device_port: port,
                tls: true,
            }
        }
        None => {
            let b = broker::start_embedded()?;
            step(
                3,
                &format!(
                    "MQTT broker: an embedded one (rumqttd) on 127.0.0.1:{} and :{} (MQTT 5), plain MQTT, no device authentication: for the demo only (install mosquitto for mutual TLS)",
                    b.v4_port, b.v5_port
                ),
            );
            // Bound is listening; a probe connection would make rumqttd log an error.
            for port in [b.v4_port, b.v5_port] {
                wait_until(
                    children,
                    &format!("the embedded broker to listen on {port}"),
                    || async move {
                        std::net::TcpListener::bind(("127.0.0.1", port))
                            .is_err()
                            .then_some(())
                    },
                )
                .await?;
            }
            Mqtt {
                gateway_port: b.v4_port,
                device_port: b.v5_port,
                tls: false,
            }
        }
    };

    step(
        4,
        "simulated Modbus TCP devices (a pump, a ventilator, a monitor) on loopback",
    );
    let (sims, modbus) = SimDevices::start_modbus(&all).await?;
    let sims = sims_slot.insert(sims);

    step(
        5,
        "three gateways (medledger run), each with its own config",
    );
    let mut apis = Vec::new();
    let web: SocketAddr = ([127, 0, 0, 1], site::free_port()?).into();
    let password = site::add_web_account(l, 1).await?;
    for id in 1..=GATEWAYS {
        let api: SocketAddr = ([127, 0, 0, 1], site::free_port()?).into();
        let mine: Vec<_> = modbus
            .iter()
            .filter(|(d, _)| d.transport == Transport::Modbus { gateway: id })
            .cloned()
            .collect();
        let config = site::write_config(
            l,
            id,
            api,
            (id == 1).then_some((mqtt.gateway_port, mqtt.tls)),
            &mine,
            (id == 1 && mqtt.tls).then_some(pid_file.as_path()),
            (id == 1).then_some(web),
        )?;
        children.spawn(
            &format!("gateway {id}"),
            &std::env::current_exe()?,
            &[
                "run".into(),
                "--config".into(),
                config.display().to_string(),
            ],
            &l.logs_dir().join(format!("gateway{id}.log")),
        )?;
        apis.push(api);
    }
    let staff = staff_client(l)?;
    for (i, api) in apis.iter().enumerate() {
        let url = format!("https://{api}/cluster/status");
        wait_until(children, &format!("gateway {} to answer", i + 1), || {
            get_json(&staff, &url)
        })
        .await?;
    }

    step(
        6,
        "one cluster of three voters (medledger cluster init --voter ...)",
    );
    let mut init = vec![
        "cluster".to_string(),
        "init".into(),
        "--config".into(),
        l.config(1).display().to_string(),
    ];
    for (i, api) in apis.iter().enumerate() {
        init.push("--voter".into());
        init.push(format!("{}={api}", i + 1));
    }
    site::medledger(&init).await?;
    for (i, api) in apis.iter().enumerate() {
        let url = format!("https://{api}/cluster/status");
        wait_until(
            children,
            &format!("gateway {} to know the leader", i + 1),
            || async {
                get_json(&staff, &url)
                    .await
                    .filter(|s| !s["leader"].is_null())
            },
        )
        .await?;
    }

    step(7, "simulated MQTT devices (two each of pumps, ventilators, monitors); at Mosquitto each with its own certificate");
    sims.start_mqtt(l, mqtt.device_port, mqtt.tls)?;

    print_ready(l, &apis, &mqtt, web, &password);

    let started = Instant::now();
    let schedule = devices::schedule();
    let mut next_step = 0usize;
    let mut cycle = 0u64;
    let mut next_summary = Duration::from_secs(args.summary_every);
    let ids = sims.ids();
    loop {
        let elapsed = started.elapsed();
        if args
            .duration
            .is_some_and(|d| elapsed >= Duration::from_secs(d))
        {
            return Ok("--duration reached");
        }
        children.check_running()?;
        let in_cycle = elapsed.as_secs().saturating_sub(cycle * devices::CYCLE_S);
        if in_cycle >= devices::CYCLE_S {
            cycle += 1;
            next_step = 0;
            continue;
        }
        while let Some(s) = schedule.get(next_step).filter(|s| s.at_s <= in_cycle) {
            sims.apply(s);
            println!("[{:>4}s] {}: {}", elapsed.as_secs(), s.device, s.says);
            next_step += 1;
        }
        if elapsed >= next_summary {
            next_summary += Duration::from_secs(args.summary_every);
            match summary(&staff, &apis, &ids).await {
                Some(line) => println!("[{:>4}s] {line}", elapsed.as_secs()),
                None => println!(
                    "[{:>4}s] (no gateway answered the summary's questions)",
                    elapsed.as_secs()
                ),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn step(n: u32, what: &str) {
    println!("[{n}/7] {what}");
}

/// Where the gateway and the devices reach the broker.
struct Mqtt {
    gateway_port: u16,
    device_port: u16,
    /// Mosquitto with mutual TLS; `false`: the embedded broker, plain MQTT.
    tls: bool,
}

/// The Mosquitto broker, when installed.
fn find_mosquitto() -> Option<PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

async fn wait_listening(children: &mut Children, what: &str, port: u16) -> anyhow::Result<()> {
    wait_until(
        children,
        &format!("{what} to listen on port {port}"),
        || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await
}

/// Polls `f` until it returns `Some`; fails when a child process has exited or after
/// [`START_WAIT`].
async fn wait_until<T, F, Fut>(children: &mut Children, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + START_WAIT;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        children.check_running()?;
        if Instant::now() > until {
            bail!("timed out after {START_WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The staff member's HTTPS client (the certificate `cert issue` wrote for them).
fn staff_client(l: &Layout) -> anyhow::Result<reqwest::Client> {
    let prefix = l.staff_prefix();
    let key = certs::CertifiedKey::from_files(
        &prefix.with_extension("crt"),
        &prefix.with_extension("key"),
    )?;
    let roots = certs::pem::load_certs(&l.root_crt())?;
    let tls = certs::client_config(&roots, &key, &Default::default(), &[])?;
    crate::service::raft_net::http_client((*tls).clone(), None, Duration::from_secs(10))
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    let r = http.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

fn history_url(api: &SocketAddr, device: &str) -> String {
    let seg: String = form_urlencoded::byte_serialize(device.as_bytes()).collect();
    format!("https://{api}/v1/devices/{seg}/history")
}

/// The site's addresses and a staff sign-in.
fn print_ready(l: &Layout, apis: &[SocketAddr], mqtt: &Mqtt, web: SocketAddr, password: &str) {
    let staff = l.staff_prefix();
    let (crt, key) = (staff.with_extension("crt"), staff.with_extension("key"));
    println!();
    println!("The site is running.");
    for (i, a) in apis.iter().enumerate() {
        println!(
            "  gateway {}: https://{a}  (log {})",
            i + 1,
            l.logs_dir().join(format!("gateway{}.log", i + 1)).display()
        );
    }
    if mqtt.tls {
        println!(
            "  MQTT broker: Mosquitto on 127.0.0.1:{} (mutual TLS; config {})",
            mqtt.gateway_port,
            l.mosquitto_dir().display()
        );
    } else {
        println!(
            "  MQTT broker: embedded, 127.0.0.1:{} (MQTT 3.1.1) and :{} (MQTT 5), plain, demo only",
            mqtt.gateway_port, mqtt.device_port
        );
    }
    print_web_sign_in(web, password);
    println!(
        "  Staff sign-in for the HTTPS API (docs/api.md), as {} (role biomed):",
        site::STAFF_ID
    );
    println!("    certificate {}", crt.display());
    println!("    key         {}", key.display());
    println!("    site root   {}", l.root_crt().display());
    println!("  Try:");
    println!(
        "    curl --cacert {} --cert {} --key {} {}",
        l.root_crt().display(),
        crt.display(),
        key.display(),
        history_url(&apis[0], "pump-icu-02")
    );
    println!(
        "Faults come and go every {} s; Ctrl-C stops the site.",
        devices::CYCLE_S
    );
    println!();
}

/// The staff web page's address (gateway 1's `[web] listen`) and the account to sign in with.
fn print_web_sign_in(web: SocketAddr, password: &str) {
    println!(
        "  Web page: https://{web}/  sign in as {} with password {password}",
        site::STAFF_ID
    );
    println!(
        "    (the site's own CA signed its certificate: your browser will ask you to accept it)"
    );
}

/// One summary line: ledger size, alarms raised and still open, devices offline now,
/// maintenance due. Asks the first gateway that answers.
async fn summary(http: &reqwest::Client, apis: &[SocketAddr], ids: &[String]) -> Option<String> {
    for api in apis {
        let Some(head) = get_json(http, &format!("https://{api}/v1/head")).await else {
            continue;
        };
        let mut raised = 0;
        let mut open = 0;
        let mut due = 0;
        let mut offline = Vec::new();
        for id in ids {
            // a device with nothing recorded yet has no history (404)
            let Some(h) = get_json(http, &history_url(api, id)).await else {
                continue;
            };
            let mut alarm_open = std::collections::HashSet::new();
            let mut is_offline = false;
            for e in h["entries"].as_array().into_iter().flatten() {
                let f = &e["fields"];
                match e["kind"].as_str().unwrap_or("") {
                    "alarm" => {
                        let rule = f["rule"].as_str().unwrap_or("").to_owned();
                        if f["state"] == "raised" {
                            raised += 1;
                            alarm_open.insert(rule);
                        } else {
                            alarm_open.remove(&rule);
                        }
                    }
                    "status-change" => is_offline = f["status"] == "offline",
                    "maintenance-due" => due += 1,
                    _ => {}
                }
            }
            open += alarm_open.len();
            if is_offline {
                offline.push(id.as_str());
            }
        }
        return Some(format!(
            "ledger {} entries; alarms raised {raised}, open {open}; maintenance due {due}; offline now: {}",
            head["size"],
            if offline.is_empty() { "none".to_string() } else { offline.join(", ") }
        ));
    }
    None
}
