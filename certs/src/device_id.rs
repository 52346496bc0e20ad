//! The one rule for device ids over MQTT, shared by the certificate profiles, the Mosquitto ACL
//! and the MQTT subscriber in `device-adapters`.
//!
//! Which ids a device certificate may carry is [`validate_device_id`] (plain asset ids and the
//! GS1, HIBCC and ISBT 128 UDI forms, see [`crate::udi`]). Those ids hold characters an MQTT topic
//! level or a Mosquitto username cannot carry: `+` and `#` are wildcards (every HIBCC UDI starts
//! with `+`, and Mosquitto denies every ACL check for a username or client id containing them),
//! `/` separates topic levels (HIBCC secondary data, GS1 serials), and a space or `%` bites in
//! shell commands and config files. So an id travels over MQTT as its **topic segment**
//! ([`mqtt_segment`]): the bytes `A-Z a-z 0-9 - . _ ( ) = ,` stay as they are (so plain ids and
//! the GS1 human-readable form read as themselves) and every other byte becomes `%XX` (upper-case
//! hex). The mapping is reversible and canonical: [`device_id_from_segment`] accepts exactly the
//! segments [`mqtt_segment`] produces for valid ids, so one device has one topic.
//!
//! | id | segment |
//! |---|---|
//! | `pump-0042` | `pump-0042` |
//! | `(01)00884838035249(21)PMP1` | `(01)00884838035249(21)PMP1` |
//! | `+A123BJC5D6E71G` | `%2BA123BJC5D6E71G` |
//! | `+H123ABC01/$$32001510X3` | `%2BH123ABC01%2F%24%2432001510X3` |
//! | `=<E0001V00` | `=%3CE0001V00` |
//!
//! **Only device certificates publish device telemetry.** A device certificate's subject CN is
//! [`mqtt_username`] = `devices/<segment>`; Mosquitto (`use_identity_as_username`) makes the CN
//! the username, and the ACL line `pattern write medledger/%u/#` lets that username write only
//! below `medledger/devices/<segment>/`. Staff, gateway and service CNs (`staff:<id>`,
//! `gateway:<id>`, `service:<name>`) contain no `/`, so the same pattern confines them to
//! `medledger/staff:<id>/#` and the like, outside `medledger/devices/`, where the gateway's
//! subscriber ([`TELEMETRY_FILTER`]) never looks. The subscriber in turn accepts a topic only if
//! its segment decodes to a valid device id ([`device_id_from_topic`]).

use crate::error::{Error, Result};
use crate::udi::validate_device_id;

/// Topic prefix before the device's segment.
pub const TOPIC_PREFIX: &str = "medledger/devices/";
/// The topic filter the gateway subscribes to for device telemetry.
pub const TELEMETRY_FILTER: &str = "medledger/devices/+/telemetry";
/// The ACL pattern that confines each device to its own topics (see the module docs).
pub const ACL_DEVICE_PATTERN: &str = "pattern write medledger/%u/#";

/// Bytes that stay literal in a segment: safe in MQTT topics, Mosquitto usernames, certificate
/// CNs, file names and shell words.
fn literal(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'(' | b')' | b'=' | b',')
}

/// The MQTT topic segment of a device id (the id's bytes, others than the literal set
/// percent-encoded). Defined for any string; [`device_id_from_segment`] reverses it for valid
/// device ids.
pub fn mqtt_segment(device_id: &str) -> String {
    let mut out = String::with_capacity(device_id.len());
    for b in device_id.bytes() {
        if literal(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn refuse(segment: &str, reason: &str) -> Error {
    Error::InvalidId {
        id: segment.to_string(),
        reason: reason.to_string(),
    }
}

/// The device id of an MQTT topic segment: percent-decoded, a valid device id, and in canonical
/// form (exactly what [`mqtt_segment`] makes of that id, so no two segments name one device).
pub fn device_id_from_segment(segment: &str) -> Result<String> {
    let b = segment.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = segment
                .get(i + 1..i + 3)
                .ok_or_else(|| refuse(segment, "mqtt segment has a '%' without two hex digits"))?;
            let v = u8::from_str_radix(hex, 16)
                .map_err(|_| refuse(segment, "mqtt segment has a '%' without two hex digits"))?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let id = String::from_utf8(out)
        .map_err(|_| refuse(segment, "mqtt segment does not decode to utf-8"))?;
    validate_device_id(&id)?;
    if mqtt_segment(&id) != segment {
        return Err(refuse(
            segment,
            "mqtt segment is not in canonical form (escape exactly the bytes outside A-Z a-z 0-9 - . _ ( ) = , as upper-case %XX)",
        ));
    }
    Ok(id)
}

/// The MQTT username of a device, which is the subject CN of its certificate:
/// `devices/<segment>`.
pub fn mqtt_username(device_id: &str) -> String {
    format!("devices/{}", mqtt_segment(device_id))
}

/// The topic a device publishes its telemetry on: `medledger/devices/<segment>/telemetry`.
pub fn telemetry_topic(device_id: &str) -> String {
    format!("{TOPIC_PREFIX}{}/telemetry", mqtt_segment(device_id))
}

/// The device id of a telemetry topic (`medledger/devices/<segment>/telemetry` with a valid,
/// canonical segment).
pub fn device_id_from_topic(topic: &str) -> Result<String> {
    let segment = topic
        .strip_prefix(TOPIC_PREFIX)
        .and_then(|r| r.strip_suffix("/telemetry"))
        .ok_or_else(|| refuse(topic, "topic is not medledger/devices/<device>/telemetry"))?;
    if segment.contains('/') {
        return Err(refuse(
            topic,
            "topic has more than one level for the device",
        ));
    }
    device_id_from_segment(segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Valid ids of every kind, including every character a UDI form allows.
    const IDS: &[&str] = &[
        "pump-0042",
        "a.b_c-D9",
        "(01)00884838035249(21)PMP1",
        "(01)00884838035249(21)SN123",
        "(01)04006381333931(17)271231(10)LOT-7",
        "(01)00884838035249(21)A/B%C?D\"E<F>G&H'I",
        "(01)00884838035249(10)*J!K,L:M;N=O(21)1",
        "010088483803524921SN123",
        "+A123BJC5D6E71G",
        "+H123ABC01/$$32001510X3",
        "=<E0001V00",
        "=/A9999PPIC01",
        "=,A999912345",
    ];

    #[test]
    fn every_valid_id_round_trips_and_is_mqtt_safe() {
        for id in IDS {
            validate_device_id(id).unwrap_or_else(|e| panic!("{id}: {e}"));
            let seg = mqtt_segment(id);
            assert!(
                !seg.contains(['+', '#', '/', ' ', ':', '$', '\0']),
                "{id} -> {seg}"
            );
            assert!(seg.is_ascii());
            assert_eq!(device_id_from_segment(&seg).unwrap(), *id);
            let topic = telemetry_topic(id);
            assert_eq!(device_id_from_topic(&topic).unwrap(), *id);
            // the ACL pattern with %u = the username yields a prefix of the telemetry topic
            let acl = ACL_DEVICE_PATTERN
                .trim_start_matches("pattern write ")
                .replace("%u", &mqtt_username(id));
            assert_eq!(acl.trim_end_matches('#'), format!("{TOPIC_PREFIX}{seg}/"));
            assert!(topic.starts_with(acl.trim_end_matches('#')));
        }
    }

    #[test]
    fn segments_by_hand() {
        assert_eq!(mqtt_segment("pump-0042"), "pump-0042");
        assert_eq!(
            mqtt_segment("(01)00884838035249(21)PMP1"),
            "(01)00884838035249(21)PMP1"
        );
        assert_eq!(mqtt_segment("+A123BJC5D6E71G"), "%2BA123BJC5D6E71G");
        assert_eq!(
            mqtt_segment("+H123ABC01/$$32001510X3"),
            "%2BH123ABC01%2F%24%2432001510X3"
        );
        assert_eq!(mqtt_segment("=<E0001V00"), "=%3CE0001V00");
        assert_eq!(mqtt_segment("a b%"), "a%20b%25");
        assert_eq!(mqtt_username("pump-1"), "devices/pump-1");
        assert_eq!(
            telemetry_topic("+A123BJC5D6E71G"),
            "medledger/devices/%2BA123BJC5D6E71G/telemetry"
        );
    }

    #[test]
    fn segment_round_trip_property() {
        // every string maps to a segment that decodes back to it whenever it is a valid id,
        // and is refused otherwise; exercised over random strings from the UDI alphabets
        use rand::{Rng, SeedableRng};
        let alphabet: Vec<char> =
            "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabc-._()=,+/$%<:;!*'\"&?># é"
                .chars()
                .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let prefixes = [
            "",
            "+",
            "=<",
            "=/",
            "(01)00884838035249(21)",
            "01008848380352492",
        ];
        for _ in 0..20_000 {
            let len = rng.gen_range(0..24);
            let mut s: String = prefixes[rng.gen_range(0..prefixes.len())].into();
            s.extend((0..len).map(|_| alphabet[rng.gen_range(0..alphabet.len())]));
            let seg = mqtt_segment(&s);
            assert!(!seg.contains(['+', '#', '/', ' ']), "{s:?} -> {seg}");
            match validate_device_id(&s) {
                Ok(_) => assert_eq!(device_id_from_segment(&seg).unwrap(), s),
                Err(_) => assert!(device_id_from_segment(&seg).is_err(), "{s:?}"),
            }
        }
    }

    #[test]
    fn non_canonical_and_bad_segments_are_refused() {
        for seg in [
            "pump%2D0042",       // '-' escaped although literal
            "%2ba123BJC5D6E71G", // lower-case hex
            "+A123BJC5D6E71G",   // raw '+'
            "staff:jdoe",        // a staff username is not a device segment
            "gateway:gw1",
            "pump%2",
            "pump%zz",
            "%FF%FE",
            "",
            "pump 1",
        ] {
            assert!(device_id_from_segment(seg).is_err(), "{seg}");
        }
        for topic in [
            "medledger/devices/staff:jdoe/telemetry",
            "medledger/devices/a/b/telemetry",
            "medledger/devices//telemetry",
            "medledger/staff:jdoe/telemetry",
            "medledger/devices/pump-1/status",
        ] {
            assert!(device_id_from_topic(topic).is_err(), "{topic}");
        }
    }
}
