//! Device id validation: plain asset ids and the three UDI issuing-agency formats.
//!
//! An id that *claims* a UDI form (by its first characters) must be well formed, so a typo in a
//! scanned UDI is refused with the reason instead of becoming a new, wrong device identity:
//!
//! - GS1: `(01)` + GTIN-14 in the human-readable form, e.g. `(01)00884838035249(21)SN123`, or the
//!   bare form `01` + 14 digits + further element strings. The GTIN mod-10 check digit is checked;
//!   the application identifiers 10 (lot), 11 (production date), 17 (expiry), 21 (serial) and
//!   240 (additional product id) are parsed and their format checked; any other AI is refused.
//!   In the bare form the variable-length fields (10, 21, 240) run to the end of the id.
//! - HIBCC: starts with `+`; every character is in the Mod 43 set and the last character is the
//!   Mod 43 check character of all preceding ones (including the `+`). The primary data structure
//!   (labeler id: letter + 3 alphanumerics, product number 1..18 alphanumerics, unit of measure
//!   digit) is checked; data after a `/` (secondary data) is covered by the check character only.
//! - ISBT 128: starts with `=`. The product code data structure `=<` (ICCBBA data structure 003:
//!   a letter, 4 digits, then 3 alphanumerics, e.g. `=<E0001V00`) is checked exactly. The
//!   processor product identification forms `=/` and `=,` are checked only for their character
//!   set (upper-case letters and digits) and length (1..32 after the data identifier), because we
//!   could not verify their field layout from a primary source; other data identifiers are refused.
//! - Anything else is a plain id: `[A-Za-z0-9._-]`, 1..64 characters.

use crate::error::{Error, Result};

/// What kind of device id was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceIdKind {
    /// A site-assigned asset id such as `pump-0042`.
    Plain,
    /// A GS1 UDI; carries the GTIN-14.
    Gs1 {
        /// The 14-digit GTIN from AI (01).
        gtin: String,
    },
    /// A HIBCC UDI.
    Hibcc,
    /// An ISBT 128 UDI.
    Isbt128,
}

/// Longest UDI we accept (the longest real ones are well under 100 characters).
const MAX_UDI_LEN: usize = 128;
/// Longest plain id.
const MAX_PLAIN_LEN: usize = 64;

fn refuse(id: &str, reason: impl Into<String>) -> Error {
    Error::InvalidId {
        id: id.to_string(),
        reason: reason.into(),
    }
}

/// Validate a device id, recognising UDI forms by their prefix.
pub fn validate_device_id(id: &str) -> Result<DeviceIdKind> {
    if id.is_empty() {
        return Err(refuse(id, "device id is empty"));
    }
    let looks_gs1_bare = id.len() >= 16
        && id.starts_with("01")
        && id.as_bytes()[2..16].iter().all(u8::is_ascii_digit);
    if id.starts_with('(') || looks_gs1_bare {
        check_len(id)?;
        return validate_gs1(id);
    }
    if id.starts_with('+') {
        check_len(id)?;
        validate_hibcc(id)?;
        return Ok(DeviceIdKind::Hibcc);
    }
    if id.starts_with('=') {
        check_len(id)?;
        validate_isbt128(id)?;
        return Ok(DeviceIdKind::Isbt128);
    }
    validate_plain_id(id, "device id")?;
    Ok(DeviceIdKind::Plain)
}

fn check_len(id: &str) -> Result<()> {
    if id.len() > MAX_UDI_LEN {
        return Err(refuse(
            id,
            format!("udi longer than {MAX_UDI_LEN} characters"),
        ));
    }
    Ok(())
}

/// Validate a plain id (`[A-Za-z0-9._-]`, 1..64 characters); `what` names it in the error.
pub fn validate_plain_id(id: &str, what: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_PLAIN_LEN {
        return Err(refuse(
            id,
            format!("{what} must be 1..{MAX_PLAIN_LEN} characters"),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(refuse(
            id,
            format!("{what} may contain only letters, digits, '.', '_' and '-', found {c:?}"),
        ));
    }
    if id == "." || id == ".." {
        return Err(refuse(id, format!("{what} may not be . or ..")));
    }
    Ok(())
}

/// The GS1 mod-10 check digit for the given data digits (all digits but the check digit).
pub fn gs1_check_digit(data: &str) -> Option<u8> {
    let mut sum = 0u32;
    for (i, c) in data.bytes().rev().enumerate() {
        if !c.is_ascii_digit() {
            return None;
        }
        let d = u32::from(c - b'0');
        sum += if i % 2 == 0 { d * 3 } else { d };
    }
    // sum % 10 < 10, so the result fits in u8
    Some(((10 - sum % 10) % 10) as u8)
}

fn check_gtin(id: &str, gtin: &str) -> Result<()> {
    if gtin.len() != 14 || !gtin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse(id, format!("gtin must be 14 digits, got {gtin:?}")));
    }
    let expected = gs1_check_digit(&gtin[..13]).ok_or_else(|| refuse(id, "gtin is not numeric"))?;
    let got = gtin.as_bytes()[13] - b'0';
    if got != expected {
        return Err(refuse(
            id,
            format!("gtin check digit is {got}, expected {expected}"),
        ));
    }
    Ok(())
}

fn check_ai_value(id: &str, ai: &str, value: &str) -> Result<()> {
    match ai {
        "01" => check_gtin(id, value),
        "11" | "17" => {
            if value.len() != 6 || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(refuse(
                    id,
                    format!("gs1 ({ai}) must be a date YYMMDD, got {value:?}"),
                ));
            }
            let mm: u8 = value[2..4].parse().unwrap_or(0);
            let dd: u8 = value[4..6].parse().unwrap_or(99);
            // GS1 allows day 00 meaning "end of month"
            if !(1..=12).contains(&mm) || dd > 31 {
                return Err(refuse(
                    id,
                    format!("gs1 ({ai}) date {value} is not a valid YYMMDD"),
                ));
            }
            Ok(())
        }
        "10" | "21" | "240" => {
            let max = if ai == "240" { 30 } else { 20 };
            if value.is_empty() || value.len() > max {
                return Err(refuse(
                    id,
                    format!("gs1 ({ai}) must be 1..{max} characters"),
                ));
            }
            // GS1 character set 82 minus the characters that would be ambiguous in our
            // parenthesised form and in URIs/MQTT topics
            if let Some(c) = value.chars().find(|c| {
                !(c.is_ascii_alphanumeric()
                    || matches!(
                        c,
                        '-' | '.'
                            | '_'
                            | '!'
                            | '*'
                            | '\''
                            | ','
                            | ':'
                            | ';'
                            | '='
                            | '&'
                            | '%'
                            | '"'
                            | '?'
                            | '<'
                            | '>'
                            | '/'
                    ))
            }) {
                return Err(refuse(
                    id,
                    format!("gs1 ({ai}) contains {c:?}, not allowed"),
                ));
            }
            Ok(())
        }
        other => Err(refuse(
            id,
            format!(
                "unsupported gs1 application identifier ({other}); supported: 01 10 11 17 21 240"
            ),
        )),
    }
}

fn validate_gs1(id: &str) -> Result<DeviceIdKind> {
    let fields = gs1_fields(id)?;
    let gtin = fields.first().map(|(_, g)| g.clone()).unwrap_or_default();
    Ok(DeviceIdKind::Gs1 { gtin })
}

/// The checked `(AI, value)` element strings of a GS1 UDI, in order, (01) first.
fn gs1_fields(id: &str) -> Result<Vec<(String, String)>> {
    let mut fields: Vec<(String, String)> = Vec::new();
    if id.starts_with('(') {
        let mut rest = id;
        while !rest.is_empty() {
            let Some(after_open) = rest.strip_prefix('(') else {
                return Err(refuse(id, "gs1 element string must be (AI)value pairs"));
            };
            let close = after_open
                .find(')')
                .ok_or_else(|| refuse(id, "gs1 application identifier has no closing ')'"))?;
            let ai = &after_open[..close];
            if ai.len() < 2 || ai.len() > 4 || !ai.bytes().all(|b| b.is_ascii_digit()) {
                return Err(refuse(
                    id,
                    format!("gs1 application identifier ({ai}) is not 2..4 digits"),
                ));
            }
            let value_and_rest = &after_open[close + 1..];
            let end = value_and_rest.find('(').unwrap_or(value_and_rest.len());
            fields.push((ai.to_string(), value_and_rest[..end].to_string()));
            rest = &value_and_rest[end..];
        }
    } else {
        // bare form: fixed-length AIs are cut by length, a variable one runs to the end
        let mut rest = id;
        while !rest.is_empty() {
            let (ai, len) = if rest.starts_with("01") {
                ("01", Some(14))
            } else if rest.starts_with("11") {
                ("11", Some(6))
            } else if rest.starts_with("17") {
                ("17", Some(6))
            } else if rest.starts_with("10") {
                ("10", None)
            } else if rest.starts_with("21") {
                ("21", None)
            } else if rest.starts_with("240") {
                ("240", None)
            } else {
                let shown: String = rest.chars().take(4).collect();
                return Err(refuse(
                    id,
                    format!("unsupported gs1 application identifier at {shown:?}; supported: 01 10 11 17 21 240"),
                ));
            };
            let body = &rest[ai.len()..];
            let n = match len {
                Some(n) if body.len() >= n && body.is_char_boundary(n) => n,
                Some(n) => return Err(refuse(id, format!("gs1 ({ai}) needs {n} characters"))),
                None => body.len(),
            };
            fields.push((ai.to_string(), body[..n].to_string()));
            rest = &body[n..];
        }
    }
    let Some((first_ai, _)) = fields.first() else {
        return Err(refuse(id, "gs1 udi is empty"));
    };
    if first_ai != "01" {
        return Err(refuse(id, "gs1 udi must start with (01) gtin"));
    }
    let mut seen = std::collections::HashSet::new();
    for (ai, value) in &fields {
        if !seen.insert(ai.as_str()) {
            return Err(refuse(id, format!("gs1 ({ai}) appears twice")));
        }
        check_ai_value(id, ai, value)?;
    }
    Ok(fields)
}

/// The issuing agency of a UDI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdiIssuer {
    Gs1,
    Hibcc,
    Iccbba,
}

impl UdiIssuer {
    /// The agency's name as FDA's GUDID writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            UdiIssuer::Gs1 => "GS1",
            UdiIssuer::Hibcc => "HIBCC",
            UdiIssuer::Iccbba => "ICCBBA",
        }
    }
}

/// A UDI split into its device identifier (DI: labeler and model, what FDA's GUDID holds) and its
/// production identifier (PI: lot, serial, dates), as the human-readable form carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdiParts {
    pub issuer: UdiIssuer,
    /// The DI: the GTIN-14 for GS1; `+` and the primary data (labeler, product, unit of
    /// measure) for HIBCC; the whole product code for ISBT 128.
    pub di: String,
    /// The PI as it follows the DI: the GS1 element strings after (01) in the parenthesised
    /// form, HIBCC secondary data without its check character; `None` when there is none
    /// (always for ISBT 128, whose production data are separate data structures).
    pub pi: Option<String>,
    /// GS1 (10) / HIBCC: the lot or batch, where the UDI carries it (GS1 only).
    pub lot: Option<String>,
    /// GS1 (21): the serial number.
    pub serial: Option<String>,
    /// GS1 (11): the production date, YYMMDD.
    pub manufactured: Option<String>,
    /// GS1 (17): the expiry date, YYMMDD.
    pub expiry: Option<String>,
}

/// Splits a UDI (GS1, HIBCC or ISBT 128, checked as [`validate_device_id`] checks it) into DI
/// and PI. A plain id is refused: it is no UDI.
pub fn udi_parts(id: &str) -> Result<UdiParts> {
    match validate_device_id(id)? {
        DeviceIdKind::Plain => Err(refuse(
            id,
            "not a UDI (GS1 starts with (01) or 01, HIBCC with +, ISBT 128 with =)",
        )),
        DeviceIdKind::Gs1 { gtin } => {
            let fields = gs1_fields(id)?;
            let find = |ai: &str| fields.iter().find(|(a, _)| a == ai).map(|(_, v)| v.clone());
            let pi: String = fields
                .iter()
                .skip(1)
                .filter(|(ai, _)| ai != "240")
                .map(|(ai, v)| format!("({ai}){v}"))
                .collect();
            Ok(UdiParts {
                issuer: UdiIssuer::Gs1,
                di: gtin,
                pi: (!pi.is_empty()).then_some(pi),
                lot: find("10"),
                serial: find("21"),
                manufactured: find("11"),
                expiry: find("17"),
            })
        }
        DeviceIdKind::Hibcc => {
            // Checked above: ASCII, at least 8 characters, the last one the check character.
            let data = &id[..id.len() - 1];
            let (di, pi) = match data.find('/') {
                Some(at) => (&data[..at], Some(data[at + 1..].to_owned())),
                None => (data, None),
            };
            Ok(UdiParts {
                issuer: UdiIssuer::Hibcc,
                di: di.to_owned(),
                pi: pi.filter(|p| !p.is_empty()),
                lot: None,
                serial: None,
                manufactured: None,
                expiry: None,
            })
        }
        DeviceIdKind::Isbt128 => Ok(UdiParts {
            issuer: UdiIssuer::Iccbba,
            di: id.to_owned(),
            pi: None,
            lot: None,
            serial: None,
            manufactured: None,
            expiry: None,
        }),
    }
}

/// Value of a character in the HIBCC Mod 43 set.
fn mod43_value(c: char) -> Option<u32> {
    const SET: &str = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-. $/+%";
    SET.find(c).map(|i| i as u32)
}

/// The HIBCC Mod 43 check character of `data` (which includes the leading `+`).
pub fn hibcc_check_char(data: &str) -> Option<char> {
    const SET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-. $/+%";
    let mut sum = 0u32;
    for c in data.chars() {
        sum += mod43_value(c)?;
    }
    // index < 43 = SET.len()
    SET.get((sum % 43) as usize).map(|b| char::from(*b))
}

fn validate_hibcc(id: &str) -> Result<()> {
    if let Some(c) = id.chars().find(|c| mod43_value(*c).is_none()) {
        return Err(refuse(
            id,
            format!("hibcc contains {c:?}, not in the mod 43 character set"),
        ));
    }
    if id.starts_with("+$") {
        return Err(refuse(
            id,
            "hibcc secondary data alone does not identify a device",
        ));
    }
    if id.len() < 8 {
        return Err(refuse(id, "hibcc primary data is too short"));
    }
    // all characters are ASCII (checked above), so byte slicing is on char boundaries
    let (data, check) = id.split_at(id.len() - 1);
    let expected =
        hibcc_check_char(data).ok_or_else(|| refuse(id, "hibcc is not in the mod 43 set"))?;
    let got = check.chars().next().unwrap_or(' ');
    if got != expected {
        return Err(refuse(
            id,
            format!("hibcc check character is {got:?}, expected {expected:?}"),
        ));
    }
    let primary = &data[1..data.find('/').unwrap_or(data.len())];
    let b = primary.as_bytes();
    if b.len() < 6 {
        return Err(refuse(
            id,
            "hibcc primary data needs labeler id, product number and unit of measure",
        ));
    }
    if !b[0].is_ascii_uppercase()
        || !b[1..4]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    {
        return Err(refuse(
            id,
            "hibcc labeler id must be a letter and 3 letters or digits",
        ));
    }
    let pcn = &b[4..b.len() - 1];
    if pcn.is_empty()
        || pcn.len() > 18
        || !pcn
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    {
        return Err(refuse(
            id,
            "hibcc product number must be 1..18 letters or digits",
        ));
    }
    if !b[b.len() - 1].is_ascii_digit() {
        return Err(refuse(id, "hibcc unit of measure must be a digit"));
    }
    Ok(())
}

fn validate_isbt128(id: &str) -> Result<()> {
    let upper_alnum = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    };
    if let Some(pc) = id.strip_prefix("=<") {
        let b = pc.as_bytes();
        let ok = b.len() == 8
            && b[0].is_ascii_uppercase()
            && b[1..5].iter().all(u8::is_ascii_digit)
            && upper_alnum(&pc[5..]);
        if !ok {
            return Err(refuse(
                id,
                "isbt 128 product code (=<) must be a letter, 4 digits and 3 letters or digits",
            ));
        }
        return Ok(());
    }
    if let Some(rest) = id.strip_prefix("=/").or_else(|| id.strip_prefix("=,")) {
        if rest.is_empty() || rest.len() > 32 || !upper_alnum(rest) {
            return Err(refuse(
                id,
                "isbt 128 product identification must be 1..32 upper-case letters or digits",
            ));
        }
        return Ok(());
    }
    Err(refuse(
        id,
        "unsupported isbt 128 data identifier (supported: =< =/ =,)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udi_parts_split_di_and_pi() {
        let p = udi_parts("(01)00884838035249(17)271231(10)LOT7(21)SN123").expect("gs1");
        assert_eq!(p.issuer, UdiIssuer::Gs1);
        assert_eq!(p.di, "00884838035249");
        assert_eq!(p.pi.as_deref(), Some("(17)271231(10)LOT7(21)SN123"));
        assert_eq!(p.serial.as_deref(), Some("SN123"));
        assert_eq!(p.lot.as_deref(), Some("LOT7"));
        assert_eq!(p.expiry.as_deref(), Some("271231"));
        let bare = udi_parts("010088483803524921SN123").expect("bare gs1");
        assert_eq!(bare.di, "00884838035249");
        assert_eq!(bare.serial.as_deref(), Some("SN123"));
        let only_di = udi_parts("(01)00884838035249").expect("di only");
        assert_eq!(only_di.pi, None);
        let hibcc = format!("+A123BJC5D6E71/$$3231231BC34567{}", "");
        let check = hibcc_check_char(&hibcc).expect("check");
        let h = udi_parts(&format!("{hibcc}{check}")).expect("hibcc");
        assert_eq!(h.issuer, UdiIssuer::Hibcc);
        assert_eq!(h.di, "+A123BJC5D6E71");
        assert_eq!(h.pi.as_deref(), Some("$$3231231BC34567"));
        let i = udi_parts("=<E0001V00").expect("isbt");
        assert_eq!(
            (i.issuer, i.di.as_str(), i.pi),
            (UdiIssuer::Iccbba, "=<E0001V00", None)
        );
        assert!(udi_parts("pump-0042").is_err());
        assert!(udi_parts("(01)00884838035248").is_err());
    }

    fn reason(id: &str) -> String {
        match validate_device_id(id) {
            Err(Error::InvalidId { reason, .. }) => reason,
            other => panic!("{id}: expected refusal, got {other:?}"),
        }
    }

    #[test]
    fn gs1_check_digit_by_hand() {
        // 0088483803524?: digits from the right weighted 3,1,3,...:
        // 4*3+2+5*3+3+0*3+8+3*3+8+4*3+8+8*3+0+0*3 = 101 -> check (10 - 1) % 10 = 9
        assert_eq!(gs1_check_digit("0088483803524"), Some(9));
        // EAN-13 4006381333931 as GTIN-14: sum 89 -> 1
        assert_eq!(gs1_check_digit("0400638133393"), Some(1));
    }

    #[test]
    fn gs1_valid_forms() {
        assert_eq!(
            validate_device_id("(01)00884838035249(21)SN123").ok(),
            Some(DeviceIdKind::Gs1 {
                gtin: "00884838035249".into()
            })
        );
        assert!(validate_device_id("(01)04006381333931(17)271231(10)LOT-7").is_ok());
        assert!(validate_device_id("0100884838035249").is_ok());
        assert!(validate_device_id("010088483803524917271231").is_ok());
        assert!(validate_device_id("010088483803524921SN123").is_ok());
    }

    #[test]
    fn gs1_invalid_forms() {
        assert_eq!(
            reason("(01)00884838035243(21)SN123"),
            "gtin check digit is 3, expected 9"
        );
        assert_eq!(
            reason("0100884838035243"),
            "gtin check digit is 3, expected 9"
        );
        assert!(reason("(01)0088483803524(21)X").contains("14 digits"));
        assert!(reason("(21)SN1(01)00884838035249").contains("must start with (01)"));
        assert!(reason("(01)00884838035249(99)X")
            .contains("unsupported gs1 application identifier (99)"));
        assert!(reason("(01)00884838035249(17)271399").contains("not a valid YYMMDD"));
        assert!(reason("(01)00884838035249(21)").contains("1..20"));
        assert!(reason("(01)00884838035249(21)A B").contains("not allowed"));
        assert!(reason("(01)00884838035249(21)A(21)B").contains("twice"));
        assert!(reason("(0100884838035249").contains("closing"));
    }

    #[test]
    fn hibcc_by_hand() {
        // + A 1 2 3 B J C 5 D 6 E 7 1 -> 41+10+1+2+3+11+19+12+5+13+6+14+7+1 = 145; 145 mod 43 = 16 -> 'G'
        assert_eq!(hibcc_check_char("+A123BJC5D6E71"), Some('G'));
        assert_eq!(
            validate_device_id("+A123BJC5D6E71G").ok(),
            Some(DeviceIdKind::Hibcc)
        );
        // with secondary data: + H 1 2 3 A B C 0 1 = 41+17+1+2+3+10+11+12+0+1 = 98,
        // / $ $ 3 2 0 0 1 5 1 0 X = 40+39+39+3+2+0+0+1+5+1+0+33 = 163; 261 mod 43 = 3 -> '3'
        assert_eq!(hibcc_check_char("+H123ABC01/$$32001510X"), Some('3'));
        assert!(validate_device_id("+H123ABC01/$$32001510X3").is_ok());
    }

    #[test]
    fn hibcc_invalid() {
        assert_eq!(
            reason("+A123BJC5D6E71H"),
            "hibcc check character is 'H', expected 'G'"
        );
        assert!(reason("+a123BJC5D6E71G").contains("mod 43 character set"));
        assert!(reason("+$$3200151").contains("secondary data alone"));
        // correct check character but labeler id starts with a digit: + 1 2 3 4 A B 1 = 41+1+2+3+4+10+11+1 = 73 -> 30 'U'
        assert_eq!(hibcc_check_char("+1234AB1"), Some('U'));
        assert!(reason("+1234AB1U").contains("labeler id"));
    }

    #[test]
    fn isbt128() {
        assert_eq!(
            validate_device_id("=<E0001V00").ok(),
            Some(DeviceIdKind::Isbt128)
        );
        assert!(validate_device_id("=/A9999PPIC01").is_ok());
        assert!(validate_device_id("=,A999912345").is_ok());
        assert!(reason("=<E001V00").contains("product code"));
        assert!(reason("=<10001V00").contains("product code"));
        assert!(reason("=/a9999").contains("upper-case"));
        assert!(reason("=%A1").contains("unsupported isbt 128"));
    }

    #[test]
    fn plain_ids() {
        assert_eq!(
            validate_device_id("pump-0042").ok(),
            Some(DeviceIdKind::Plain)
        );
        assert!(validate_device_id("a.b_c-D9").is_ok());
        assert!(reason("").contains("empty"));
        assert!(reason("pump 1").contains("found ' '"));
        assert!(reason("pump/1").contains("found '/'"));
        assert!(reason(&"x".repeat(65)).contains("1..64"));
        assert!(reason("..").contains("may not be"));
        // a short 01-prefixed id is plain, not GS1
        assert!(validate_device_id("0123").is_ok());
    }
}
