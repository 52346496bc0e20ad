//! Device profiles: which registers a kind of device has and how to read them (in the spirit of
//! EdgeX device profiles), loaded from TOML and validated once, so the poller never meets a
//! profile it cannot use.

use std::{collections::HashSet, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

use crate::decode::{self, ByteOrder, DataType, RawValue, WordOrder};
use crate::{Error, Result, Value};

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Read/write 16-bit registers (function 3).
    Holding,
    /// Read-only 16-bit registers (function 4).
    Input,
    /// Read/write bits (function 1).
    Coil,
    /// Read-only bits (function 2).
    Discrete,
}

impl Table {
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }
}

/// How the simulator makes a register's value evolve (ignored by the poller).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SimBehaviour {
    /// `constant`, `sine` (nominal ± amplitude over period_s), `ramp` (nominal + rate * t),
    /// `decay` (nominal - rate * t, floored at 0), `alarm` (0 / alarm bits when the alarm fault is
    /// on).
    #[serde(default = "default_sim_kind")]
    pub kind: String,
    #[serde(default)]
    pub nominal: f64,
    #[serde(default)]
    pub amplitude: f64,
    #[serde(default = "default_period")]
    pub period_s: f64,
    /// Per second, for `ramp` and `decay`.
    #[serde(default)]
    pub rate: f64,
    /// Text for string registers.
    #[serde(default)]
    pub text: Option<String>,
}

fn default_sim_kind() -> String {
    "constant".into()
}
fn default_period() -> f64 {
    60.0
}
fn one() -> f64 {
    1.0
}

/// One named value in a device's register map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterDef {
    /// Metric name, e.g. `flow_rate`.
    pub name: String,
    pub table: Table,
    /// Zero-based protocol address.
    pub address: u16,
    #[serde(rename = "type")]
    pub data_type: DataType,
    /// Registers to read; derived from the type except for strings (required there).
    #[serde(default)]
    pub count: Option<u16>,
    #[serde(default)]
    pub byte_order: ByteOrder,
    #[serde(default)]
    pub word_order: WordOrder,
    /// physical = raw * scale + offset
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    #[serde(default)]
    pub unit: Option<String>,
    /// For `bool` in a 16-bit register: which bit (0 = least significant).
    #[serde(default)]
    pub bit: Option<u8>,
    #[serde(default)]
    pub sim: Option<SimBehaviour>,
}

impl RegisterDef {
    /// Registers (or bits) this value occupies.
    pub fn words(&self) -> u16 {
        if self.table.is_bits() {
            return 1;
        }
        self.data_type.fixed_words().or(self.count).unwrap_or(1)
    }

    /// Decode what was read for this register.
    pub fn decode(&self, words: &[u16]) -> Result<Value> {
        let err = |e: decode::CodecError| Error::Decode {
            name: self.name.clone(),
            message: e.to_string(),
        };
        let raw = decode::decode_words(
            words,
            self.data_type,
            self.byte_order,
            self.word_order,
            self.bit,
        )
        .map_err(err)?;
        decode::to_physical(raw, self.scale, self.offset).map_err(err)
    }

    /// Encode a physical value into this register's words (simulator and tests).
    /// For bit tables the result is one word, 0 or 1.
    pub fn encode(&self, value: &Value) -> Result<Vec<u16>> {
        let err = |e: decode::CodecError| Error::Encode {
            name: self.name.clone(),
            message: e.to_string(),
        };
        let raw =
            decode::from_physical(value, self.data_type, self.scale, self.offset).map_err(err)?;
        if let (Some(bit), RawValue::Bool(b)) = (self.bit, &raw) {
            return Ok(vec![u16::from(*b) << bit]);
        }
        decode::encode_words(
            &raw,
            self.data_type,
            self.byte_order,
            self.word_order,
            self.words(),
        )
        .map_err(err)
    }
}

/// A kind of device: its register map and how often to poll it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    pub name: String,
    #[serde(default)]
    pub manufacturer: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Poll period in milliseconds.
    pub poll_interval_ms: u64,
    #[serde(rename = "registers")]
    pub registers: Vec<RegisterDef>,
}

/// Largest register count one read may ask for (Modbus limit for function 3/4).
const MAX_READ_WORDS: u16 = 125;

impl DeviceProfile {
    /// Parse and validate a profile from TOML text; `name` labels errors.
    pub fn from_toml(name: &str, text: &str) -> Result<Self> {
        let p: DeviceProfile = toml::from_str(text).map_err(|e| Error::ProfileInvalid {
            name: name.to_owned(),
            message: e.to_string(),
        })?;
        p.validate()?;
        Ok(p)
    }

    /// Read, parse and validate a profile file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ProfileRead {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&path.display().to_string(), &text)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// Check everything the poller relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Error::ProfileInvalid {
            name: self.name.clone(),
            message,
        };
        if self.poll_interval_ms == 0 {
            return Err(bad("poll_interval_ms must be > 0".into()));
        }
        if self.registers.is_empty() {
            return Err(bad("no registers".into()));
        }
        let mut names = HashSet::new();
        for r in &self.registers {
            if !names.insert(r.name.as_str()) {
                return Err(bad(format!("duplicate register name {}", r.name)));
            }
            if r.table.is_bits() && r.data_type != DataType::Bool {
                return Err(bad(format!(
                    "register {}: coil and discrete tables hold only bool",
                    r.name
                )));
            }
            if r.data_type == DataType::String && !r.table.is_bits() && r.count.is_none() {
                return Err(bad(format!("register {}: string needs count", r.name)));
            }
            if let (Some(fixed), Some(count)) = (r.data_type.fixed_words(), r.count) {
                if !r.table.is_bits() && fixed != count {
                    return Err(bad(format!(
                        "register {}: type {:?} takes {fixed} registers, count says {count}",
                        r.name, r.data_type
                    )));
                }
            }
            let n = r.words();
            if n == 0 || n > MAX_READ_WORDS {
                return Err(bad(format!(
                    "register {}: count must be 1..={MAX_READ_WORDS}",
                    r.name
                )));
            }
            if u32::from(r.address) + u32::from(n) > 65_536 {
                return Err(bad(format!(
                    "register {}: address + count past 65535",
                    r.name
                )));
            }
            if let Some(bit) = r.bit {
                if bit >= 16 || r.data_type != DataType::Bool || r.table.is_bits() {
                    return Err(bad(format!(
                        "register {}: bit needs a bool in a 16-bit register, 0..=15",
                        r.name
                    )));
                }
            }
            if !r.scale.is_finite() || r.scale == 0.0 || !r.offset.is_finite() {
                return Err(bad(format!(
                    "register {}: scale must be finite and non-zero, offset finite",
                    r.name
                )));
            }
        }
        Ok(())
    }
}

/// The profiles shipped in `device-adapters/profiles/`, embedded so the simulator and demo need
/// no files: (file stem, TOML text).
pub const BUILTIN_PROFILES: [(&str, &str); 3] = [
    (
        "infusion-pump",
        include_str!("../profiles/infusion-pump.toml"),
    ),
    ("ventilator", include_str!("../profiles/ventilator.toml")),
    (
        "patient-monitor",
        include_str!("../profiles/patient-monitor.toml"),
    ),
];

/// Parse one of [`BUILTIN_PROFILES`] by name.
pub fn builtin_profile(name: &str) -> Result<DeviceProfile> {
    let (_, text) = BUILTIN_PROFILES
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| Error::ProfileInvalid {
            name: name.to_owned(),
            message: "no built-in profile of that name".into(),
        })?;
    DeviceProfile::from_toml(name, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_parse_and_validate() {
        for (name, _) in BUILTIN_PROFILES {
            let p = builtin_profile(name).expect(name);
            assert!(p.registers.len() >= 4, "{name}");
        }
    }

    #[test]
    fn invalid_profiles_are_refused_with_the_register_named() {
        let base = "name = \"x\"\npoll_interval_ms = 100\n";
        let cases = [
            ("[[registers]]\nname=\"a\"\ntable=\"coil\"\naddress=0\ntype=\"u16\"\n", "coil"),
            ("[[registers]]\nname=\"a\"\ntable=\"holding\"\naddress=0\ntype=\"string\"\n", "string needs count"),
            ("[[registers]]\nname=\"a\"\ntable=\"holding\"\naddress=65535\ntype=\"u32\"\n", "past 65535"),
            ("[[registers]]\nname=\"a\"\ntable=\"holding\"\naddress=0\ntype=\"u32\"\ncount=4\n", "takes 2"),
            ("[[registers]]\nname=\"a\"\ntable=\"holding\"\naddress=0\ntype=\"u16\"\nscale=0.0\n", "scale"),
            ("[[registers]]\nname=\"a\"\ntable=\"holding\"\naddress=0\ntype=\"u16\"\n[[registers]]\nname=\"a\"\ntable=\"holding\"\naddress=1\ntype=\"u16\"\n", "duplicate"),
            ("[[registers]]\nname=\"a\"\ntable=\"holding\"\naddress=0\ntype=\"u17\"\n", "u17"),
        ];
        for (regs, want) in cases {
            let e = DeviceProfile::from_toml("t", &format!("{base}{regs}"))
                .expect_err(want)
                .to_string();
            assert!(e.contains(want), "{e} should mention {want}");
        }
    }
}
