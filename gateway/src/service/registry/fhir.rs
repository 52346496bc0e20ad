//! FHIR R4 views of the registry: a Bundle of Device resources (udiCarrier, status,
//! manufacturer, model, serial, location) and of DeviceMetric resources carrying each device's
//! calibration (DeviceMetric.calibration: type, state, time). R4 has no maintenance-history
//! resource; the ledger's own history and receipts stay the record of that.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::due::calibration_state;
use super::index::{DeviceState, Index};
use super::Status;

/// The FHIR id of a device: ids allow `[A-Za-z0-9-.]{1,64}` only, and UDIs have parentheses,
/// `+`, `=`..., so the id is derived from the device id (which travels as an identifier).
pub fn device_fhir_id(device_id: &str) -> String {
    let h = Sha256::digest(device_id.as_bytes());
    format!("dev-{}", hex::encode(&h[..16]))
}

/// The system of the gateway's device ids in FHIR identifiers.
pub const DEVICE_ID_SYSTEM: &str = "urn:medledger:device-id";
/// The system of the hospital's asset numbers.
pub const ASSET_SYSTEM: &str = "urn:medledger:asset-number";

fn issuer_uri(issuer: &str) -> &'static str {
    // The UDI issuing agencies' NamingSystem URIs from FHIR R4's Device.udiCarrier.issuer.
    match issuer {
        "GS1" => "http://hl7.org/fhir/NamingSystem/gs1-di",
        "HIBCC" => "http://hl7.org/fhir/NamingSystem/hibcc-dI",
        _ => "http://hl7.org/fhir/NamingSystem/iccbba-other-di",
    }
}

/// One Device resource.
pub fn device(dev: &DeviceState) -> Value {
    let mut identifier = vec![json!({"system": DEVICE_ID_SYSTEM, "value": dev.device_id})];
    if let Some(a) = &dev.asset_number {
        identifier.push(json!({"system": ASSET_SYSTEM, "value": a}));
    }
    let mut d = json!({
        "resourceType": "Device",
        "id": device_fhir_id(&dev.device_id),
        "identifier": identifier,
        "status": match dev.status {
            Status::InService => "active",
            Status::OutOfService | Status::Decommissioned => "inactive",
            Status::UnableToLocate => "unknown",
        },
    });
    let o = d.as_object_mut().expect("a json object literal");
    if let Some(u) = &dev.udi {
        o.insert(
            "udiCarrier".into(),
            json!([{
                "deviceIdentifier": u.di,
                "issuer": issuer_uri(&u.issuer),
                "carrierHRF": u.carrier,
            }]),
        );
    }
    if let Some(m) = &dev.manufacturer {
        o.insert("manufacturer".into(), json!(m));
    }
    if let Some(m) = &dev.model {
        o.insert("modelNumber".into(), json!(m));
    }
    if let Some(s) = &dev.serial {
        o.insert("serialNumber".into(), json!(s));
    }
    if let Some(n) = &dev.nomenclature {
        let system = match n.system.as_str() {
            "gmdn" => Some("http://www.gmdnagency.org"),
            "umdns" => Some("http://www.ecri.org/umdns"),
            "fda" => Some("http://hl7.org/fhir/sid/fda-product-code"),
            _ => None,
        };
        let mut coding = json!({"display": n.term});
        if let (Some(sys), Some(code)) = (system, &n.code) {
            coding["system"] = json!(sys);
            coding["code"] = json!(code);
        }
        o.insert("type".into(), json!({"coding": [coding], "text": n.term}));
    }
    if let Some(l) = &dev.location {
        o.insert("location".into(), json!({"display": l}));
    }
    d
}

/// The DeviceMetric of a device's calibration, as of `now_ms`.
pub fn calibration_metric(index: &Index, dev: &DeviceState, now_ms: i64) -> Value {
    let state = calibration_state(index, dev, now_ms);
    let mut cal = json!({"type": "unspecified", "state": state.as_str()});
    if let Some(d) = dev.last_calibration() {
        cal["time"] = json!(crate::event::format_ms(d.at_ms));
    }
    let id = device_fhir_id(&dev.device_id);
    json!({
        "resourceType": "DeviceMetric",
        "id": format!("{id}-cal"),
        "type": {"text": "calibration"},
        "source": {"reference": format!("Device/{id}")},
        "category": "measurement",
        "calibration": [cal],
    })
}

/// A searchset Bundle of `resources`.
pub fn bundle(resources: Vec<Value>) -> Value {
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let url = format!(
                "urn:medledger:{}/{}",
                r["resourceType"].as_str().unwrap_or(""),
                r["id"].as_str().unwrap_or("")
            );
            json!({"fullUrl": url, "resource": r, "search": {"mode": "match"}})
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "entry": entries,
    })
}
