//! Register decoding and encoding: pure functions, no I/O.
//!
//! A value occupies one or more 16-bit registers. We first turn the registers into one
//! big-endian byte string, then read the declared type from it:
//!
//! * **word order** `big`: the first register (lowest address) holds the most significant word;
//!   `little`: the register order is reversed before reading (for strings too, so a `little` word
//!   order string is stored last-register-first).
//! * **byte order** `big`: the high byte of each register comes first (the Modbus default);
//!   `little`: the two bytes inside each register are swapped.
//!
//! So for a u32 `0x11223344`: big/big = `[0x1122, 0x3344]`, little-byte/big-word =
//! `[0x2211, 0x4433]`, big-byte/little-word = `[0x3344, 0x1122]`, little/little =
//! `[0x4433, 0x2211]`. Strings are NUL-padded; decoding stops at the first NUL.
//!
//! This is where register bugs live (EdgeX had byte/word swap bugs for 64-bit values and
//! strings), so every type is tested with every order combination, both as round trips and
//! against byte vectors written by hand.

use serde::{Deserialize, Serialize};

/// The declared type of a register value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    Bool,
    String,
}

impl DataType {
    /// Every type, for tests and the simulator.
    pub const ALL: [DataType; 10] = [
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::U64,
        DataType::I64,
        DataType::F32,
        DataType::F64,
        DataType::Bool,
        DataType::String,
    ];

    /// Registers a value of this type occupies; `None` for strings (declared per register).
    pub fn fixed_words(self) -> Option<u16> {
        match self {
            DataType::U16 | DataType::I16 | DataType::Bool => Some(1),
            DataType::U32 | DataType::I32 | DataType::F32 => Some(2),
            DataType::U64 | DataType::I64 | DataType::F64 => Some(4),
            DataType::String => None,
        }
    }

    fn is_integer(self) -> bool {
        matches!(
            self,
            DataType::U16
                | DataType::I16
                | DataType::U32
                | DataType::I32
                | DataType::U64
                | DataType::I64
        )
    }
}

/// Order of the two bytes inside one register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ByteOrder {
    #[default]
    Big,
    Little,
}

/// Order of the registers of a multi-register value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    #[default]
    Big,
    Little,
}

/// A value as stored in the registers, before scale and offset.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

/// Why registers could not be decoded or a value encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("expected {expected} registers, got {got}")]
    WordCount { expected: usize, got: usize },
    #[error("string registers are not valid utf-8")]
    NotUtf8,
    #[error("value {0} does not fit the declared type")]
    OutOfRange(String),
    #[error("value kind does not match the declared type {0:?}")]
    KindMismatch(DataType),
    #[error("bit {0} is outside a 16-bit register")]
    BadBit(u8),
}

/// Registers -> one big-endian byte string, per the byte and word order.
pub fn words_to_bytes(words: &[u16], byte_order: ByteOrder, word_order: WordOrder) -> Vec<u8> {
    let mut out = Vec::with_capacity(words.len() * 2);
    let mut push = |w: u16| match byte_order {
        ByteOrder::Big => out.extend_from_slice(&w.to_be_bytes()),
        ByteOrder::Little => out.extend_from_slice(&w.to_le_bytes()),
    };
    match word_order {
        WordOrder::Big => words.iter().copied().for_each(&mut push),
        WordOrder::Little => words.iter().rev().copied().for_each(&mut push),
    }
    out
}

/// The inverse of [`words_to_bytes`]. `bytes.len()` must be even (a trailing odd byte is padded
/// with 0).
pub fn bytes_to_words(bytes: &[u8], byte_order: ByteOrder, word_order: WordOrder) -> Vec<u16> {
    let mut words: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            let pair = [c[0], c.get(1).copied().unwrap_or(0)];
            match byte_order {
                ByteOrder::Big => u16::from_be_bytes(pair),
                ByteOrder::Little => u16::from_le_bytes(pair),
            }
        })
        .collect();
    if word_order == WordOrder::Little {
        words.reverse();
    }
    words
}

fn take<const N: usize>(bytes: &[u8]) -> Result<[u8; N], CodecError> {
    bytes.try_into().map_err(|_| CodecError::WordCount {
        expected: N / 2,
        got: bytes.len() / 2,
    })
}

/// Decode registers into a raw value of `data_type`.
///
/// `bit` selects one bit of a single register for [`DataType::Bool`]; without it a register is
/// true when non-zero.
pub fn decode_words(
    words: &[u16],
    data_type: DataType,
    byte_order: ByteOrder,
    word_order: WordOrder,
    bit: Option<u8>,
) -> Result<RawValue, CodecError> {
    if let Some(n) = data_type.fixed_words() {
        if words.len() != usize::from(n) {
            return Err(CodecError::WordCount {
                expected: usize::from(n),
                got: words.len(),
            });
        }
    }
    let b = words_to_bytes(words, byte_order, word_order);
    Ok(match data_type {
        DataType::U16 => RawValue::Unsigned(u64::from(u16::from_be_bytes(take(&b)?))),
        DataType::I16 => RawValue::Signed(i64::from(i16::from_be_bytes(take(&b)?))),
        DataType::U32 => RawValue::Unsigned(u64::from(u32::from_be_bytes(take(&b)?))),
        DataType::I32 => RawValue::Signed(i64::from(i32::from_be_bytes(take(&b)?))),
        DataType::U64 => RawValue::Unsigned(u64::from_be_bytes(take(&b)?)),
        DataType::I64 => RawValue::Signed(i64::from_be_bytes(take(&b)?)),
        DataType::F32 => RawValue::Float(f64::from(f32::from_be_bytes(take(&b)?))),
        DataType::F64 => RawValue::Float(f64::from_be_bytes(take(&b)?)),
        DataType::Bool => {
            let w = u16::from_be_bytes(take(&b)?);
            match bit {
                Some(bit) if bit >= 16 => return Err(CodecError::BadBit(bit)),
                Some(bit) => RawValue::Bool(w & (1 << bit) != 0),
                None => RawValue::Bool(w != 0),
            }
        }
        DataType::String => {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            let s = std::str::from_utf8(&b[..end]).map_err(|_| CodecError::NotUtf8)?;
            RawValue::Text(s.to_owned())
        }
    })
}

/// Encode a raw value into `words` registers (`words` matters only for strings, which are
/// NUL-padded; a string longer than `2 * words` bytes is an error).
pub fn encode_words(
    value: &RawValue,
    data_type: DataType,
    byte_order: ByteOrder,
    word_order: WordOrder,
    words: u16,
) -> Result<Vec<u16>, CodecError> {
    let range = |v: &dyn std::fmt::Debug| CodecError::OutOfRange(format!("{v:?}"));
    let as_u64 = |v: &RawValue| -> Result<u64, CodecError> {
        match v {
            RawValue::Unsigned(u) => Ok(*u),
            RawValue::Signed(i) => u64::try_from(*i).map_err(|_| range(i)),
            _ => Err(CodecError::KindMismatch(data_type)),
        }
    };
    let as_i64 = |v: &RawValue| -> Result<i64, CodecError> {
        match v {
            RawValue::Signed(i) => Ok(*i),
            RawValue::Unsigned(u) => i64::try_from(*u).map_err(|_| range(u)),
            _ => Err(CodecError::KindMismatch(data_type)),
        }
    };
    let bytes: Vec<u8> = match data_type {
        DataType::U16 => {
            let v = as_u64(value)?;
            u16::try_from(v)
                .map_err(|_| range(&v))?
                .to_be_bytes()
                .to_vec()
        }
        DataType::I16 => {
            let v = as_i64(value)?;
            i16::try_from(v)
                .map_err(|_| range(&v))?
                .to_be_bytes()
                .to_vec()
        }
        DataType::U32 => {
            let v = as_u64(value)?;
            u32::try_from(v)
                .map_err(|_| range(&v))?
                .to_be_bytes()
                .to_vec()
        }
        DataType::I32 => {
            let v = as_i64(value)?;
            i32::try_from(v)
                .map_err(|_| range(&v))?
                .to_be_bytes()
                .to_vec()
        }
        DataType::U64 => as_u64(value)?.to_be_bytes().to_vec(),
        DataType::I64 => as_i64(value)?.to_be_bytes().to_vec(),
        DataType::F32 => match value {
            // Narrowing to f32 is the point of an f32 register.
            RawValue::Float(f) => (*f as f32).to_be_bytes().to_vec(),
            _ => return Err(CodecError::KindMismatch(data_type)),
        },
        DataType::F64 => match value {
            RawValue::Float(f) => f.to_be_bytes().to_vec(),
            _ => return Err(CodecError::KindMismatch(data_type)),
        },
        DataType::Bool => match value {
            RawValue::Bool(b) => u16::from(*b).to_be_bytes().to_vec(),
            _ => return Err(CodecError::KindMismatch(data_type)),
        },
        DataType::String => match value {
            RawValue::Text(s) => {
                let cap = usize::from(words) * 2;
                if s.len() > cap || s.as_bytes().contains(&0) {
                    return Err(range(s));
                }
                let mut b = s.as_bytes().to_vec();
                b.resize(cap, 0);
                b
            }
            _ => return Err(CodecError::KindMismatch(data_type)),
        },
    };
    Ok(bytes_to_words(&bytes, byte_order, word_order))
}

/// Raw value -> physical value: `raw * scale + offset`. Integers stay integers when the scaling
/// is the identity; anything scaled becomes a float.
pub fn to_physical(raw: RawValue, scale: f64, offset: f64) -> Result<crate::Value, CodecError> {
    use crate::Value;
    let identity = scale == 1.0 && offset == 0.0;
    Ok(match raw {
        RawValue::Unsigned(u) if identity => {
            Value::Integer(i64::try_from(u).map_err(|_| CodecError::OutOfRange(u.to_string()))?)
        }
        RawValue::Signed(i) if identity => Value::Integer(i),
        RawValue::Unsigned(u) => Value::Float(u as f64 * scale + offset),
        RawValue::Signed(i) => Value::Float(i as f64 * scale + offset),
        RawValue::Float(f) => Value::Float(f * scale + offset),
        RawValue::Bool(b) => Value::Bool(b),
        RawValue::Text(s) => Value::Text(s),
    })
}

/// Physical value -> raw value of `data_type` (the simulator's side): `(v - offset) / scale`,
/// rounded to the nearest integer for integer types.
pub fn from_physical(
    value: &crate::Value,
    data_type: DataType,
    scale: f64,
    offset: f64,
) -> Result<RawValue, CodecError> {
    use crate::Value;
    match (value, data_type) {
        (Value::Bool(b), DataType::Bool) => Ok(RawValue::Bool(*b)),
        (Value::Text(s), DataType::String) => Ok(RawValue::Text(s.clone())),
        (Value::Integer(i), t) if t.is_integer() && scale == 1.0 && offset == 0.0 => {
            Ok(RawValue::Signed(*i))
        }
        (v, t) if t.is_integer() || matches!(t, DataType::F32 | DataType::F64) => {
            let f = v.as_f64().ok_or(CodecError::KindMismatch(t))?;
            let raw = (f - offset) / scale;
            if matches!(t, DataType::F32 | DataType::F64) {
                return Ok(RawValue::Float(raw));
            }
            let r = raw.round();
            if !r.is_finite() {
                return Err(CodecError::OutOfRange(raw.to_string()));
            }
            // `as` saturates; the range checks in encode_words catch values past the type.
            if r < 0.0 {
                Ok(RawValue::Signed(r as i64))
            } else {
                Ok(RawValue::Unsigned(r as u64))
            }
        }
        _ => Err(CodecError::KindMismatch(data_type)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ByteOrder as B;
    use WordOrder as W;

    const ORDERS: [(ByteOrder, WordOrder); 4] = [
        (B::Big, W::Big),
        (B::Little, W::Big),
        (B::Big, W::Little),
        (B::Little, W::Little),
    ];

    fn sample(t: DataType) -> (RawValue, u16) {
        match t {
            DataType::U16 => (RawValue::Unsigned(0xBEEF), 1),
            DataType::I16 => (RawValue::Signed(-12345), 1),
            DataType::U32 => (RawValue::Unsigned(0xDEAD_BEEF), 2),
            DataType::I32 => (RawValue::Signed(-123_456_789), 2),
            DataType::U64 => (RawValue::Unsigned(0xFEDC_BA98_7654_3210), 4),
            DataType::I64 => (RawValue::Signed(-1_234_567_890_123_456_789), 4),
            DataType::F32 => (RawValue::Float(f64::from(-1234.5f32)), 2),
            DataType::F64 => (RawValue::Float(std::f64::consts::PI), 4),
            DataType::Bool => (RawValue::Bool(true), 1),
            DataType::String => (RawValue::Text("PUMP-42x".into()), 5),
        }
    }

    #[test]
    fn every_type_round_trips_in_every_order() {
        for t in DataType::ALL {
            let (v, n) = sample(t);
            for (bo, wo) in ORDERS {
                let words = encode_words(&v, t, bo, wo, n).expect("encode");
                assert_eq!(words.len(), usize::from(n), "{t:?} {bo:?} {wo:?}");
                let back = decode_words(&words, t, bo, wo, None).expect("decode");
                assert_eq!(back, v, "{t:?} {bo:?} {wo:?} words {words:04x?}");
            }
        }
    }

    /// Hand-computed register images: (type, order, words, expected value).
    #[test]
    fn every_type_in_every_order_matches_hand_written_registers() {
        let u16v = RawValue::Unsigned(0x1122);
        let i16v = RawValue::Signed(-2); // 0xFFFE
        let u32v = RawValue::Unsigned(0x1122_3344);
        let i32v = RawValue::Signed(-2); // 0xFFFF_FFFE
        let u64v = RawValue::Unsigned(0x1122_3344_5566_7788);
        let i64v = RawValue::Signed(-2); // 0xFFFF_FFFF_FFFF_FFFE
        let f32v = RawValue::Float(1.0); // 0x3F80_0000
        let f64v = RawValue::Float(1.0); // 0x3FF0_0000_0000_0000
        let s = RawValue::Text("ABCD".into()); // 41 42 43 44
        #[rustfmt::skip]
        let cases: Vec<(DataType, ByteOrder, WordOrder, Vec<u16>, RawValue)> = vec![
            (DataType::U16, B::Big, W::Big, vec![0x1122], u16v.clone()),
            (DataType::U16, B::Little, W::Big, vec![0x2211], u16v.clone()),
            (DataType::U16, B::Big, W::Little, vec![0x1122], u16v.clone()),
            (DataType::U16, B::Little, W::Little, vec![0x2211], u16v),
            (DataType::I16, B::Big, W::Big, vec![0xFFFE], i16v.clone()),
            (DataType::I16, B::Little, W::Big, vec![0xFEFF], i16v.clone()),
            (DataType::I16, B::Big, W::Little, vec![0xFFFE], i16v.clone()),
            (DataType::I16, B::Little, W::Little, vec![0xFEFF], i16v),
            (DataType::U32, B::Big, W::Big, vec![0x1122, 0x3344], u32v.clone()),
            (DataType::U32, B::Little, W::Big, vec![0x2211, 0x4433], u32v.clone()),
            (DataType::U32, B::Big, W::Little, vec![0x3344, 0x1122], u32v.clone()),
            (DataType::U32, B::Little, W::Little, vec![0x4433, 0x2211], u32v),
            (DataType::I32, B::Big, W::Big, vec![0xFFFF, 0xFFFE], i32v.clone()),
            (DataType::I32, B::Little, W::Big, vec![0xFFFF, 0xFEFF], i32v.clone()),
            (DataType::I32, B::Big, W::Little, vec![0xFFFE, 0xFFFF], i32v.clone()),
            (DataType::I32, B::Little, W::Little, vec![0xFEFF, 0xFFFF], i32v),
            (DataType::U64, B::Big, W::Big, vec![0x1122, 0x3344, 0x5566, 0x7788], u64v.clone()),
            (DataType::U64, B::Little, W::Big, vec![0x2211, 0x4433, 0x6655, 0x8877], u64v.clone()),
            (DataType::U64, B::Big, W::Little, vec![0x7788, 0x5566, 0x3344, 0x1122], u64v.clone()),
            (DataType::U64, B::Little, W::Little, vec![0x8877, 0x6655, 0x4433, 0x2211], u64v),
            (DataType::I64, B::Big, W::Big, vec![0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], i64v.clone()),
            (DataType::I64, B::Little, W::Big, vec![0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF], i64v.clone()),
            (DataType::I64, B::Big, W::Little, vec![0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF], i64v.clone()),
            (DataType::I64, B::Little, W::Little, vec![0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF], i64v),
            (DataType::F32, B::Big, W::Big, vec![0x3F80, 0x0000], f32v.clone()),
            (DataType::F32, B::Little, W::Big, vec![0x803F, 0x0000], f32v.clone()),
            (DataType::F32, B::Big, W::Little, vec![0x0000, 0x3F80], f32v.clone()),
            (DataType::F32, B::Little, W::Little, vec![0x0000, 0x803F], f32v),
            (DataType::F64, B::Big, W::Big, vec![0x3FF0, 0, 0, 0], f64v.clone()),
            (DataType::F64, B::Little, W::Big, vec![0xF03F, 0, 0, 0], f64v.clone()),
            (DataType::F64, B::Big, W::Little, vec![0, 0, 0, 0x3FF0], f64v.clone()),
            (DataType::F64, B::Little, W::Little, vec![0, 0, 0, 0xF03F], f64v),
            (DataType::Bool, B::Big, W::Big, vec![0x0001], RawValue::Bool(true)),
            (DataType::Bool, B::Little, W::Big, vec![0x0100], RawValue::Bool(true)),
            (DataType::Bool, B::Big, W::Little, vec![0x0001], RawValue::Bool(true)),
            (DataType::Bool, B::Little, W::Little, vec![0x0100], RawValue::Bool(true)),
            (DataType::String, B::Big, W::Big, vec![0x4142, 0x4344, 0x0000], s.clone()),
            (DataType::String, B::Little, W::Big, vec![0x4241, 0x4443, 0x0000], s.clone()),
            (DataType::String, B::Big, W::Little, vec![0x0000, 0x4344, 0x4142], s.clone()),
            (DataType::String, B::Little, W::Little, vec![0x0000, 0x4443, 0x4241], s),
        ];
        assert_eq!(cases.len(), DataType::ALL.len() * 4);
        for (t, bo, wo, words, v) in cases {
            assert_eq!(
                decode_words(&words, t, bo, wo, None).as_ref(),
                Ok(&v),
                "{t:?} {bo:?} {wo:?}"
            );
            let n = words.len() as u16;
            assert_eq!(
                encode_words(&v, t, bo, wo, n).as_ref(),
                Ok(&words),
                "{t:?} {bo:?} {wo:?}"
            );
        }
    }

    #[test]
    fn bool_bits_and_zero() {
        let d = |w: u16, bit| decode_words(&[w], DataType::Bool, B::Big, W::Big, bit);
        assert_eq!(d(0, None), Ok(RawValue::Bool(false)));
        assert_eq!(d(0b100, Some(2)), Ok(RawValue::Bool(true)));
        assert_eq!(d(0b100, Some(1)), Ok(RawValue::Bool(false)));
        assert_eq!(d(1, Some(16)), Err(CodecError::BadBit(16)));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(
            decode_words(&[1], DataType::U32, B::Big, W::Big, None),
            Err(CodecError::WordCount {
                expected: 2,
                got: 1
            })
        ));
        assert_eq!(
            decode_words(&[0xFFFE], DataType::String, B::Big, W::Big, None),
            Err(CodecError::NotUtf8)
        );
        assert!(encode_words(
            &RawValue::Unsigned(70_000),
            DataType::U16,
            B::Big,
            W::Big,
            1
        )
        .is_err());
        assert!(encode_words(&RawValue::Signed(-1), DataType::U32, B::Big, W::Big, 2).is_err());
        assert!(encode_words(
            &RawValue::Text("toolong".into()),
            DataType::String,
            B::Big,
            W::Big,
            2
        )
        .is_err());
        assert!(to_physical(RawValue::Unsigned(u64::MAX), 1.0, 0.0).is_err());
    }

    #[test]
    fn scaling_both_ways() {
        use crate::Value;
        let v = to_physical(RawValue::Unsigned(1250), 0.01, 0.0).expect("scale");
        assert_eq!(v, Value::Float(12.5));
        let raw = from_physical(&Value::Float(12.5), DataType::U16, 0.01, 0.0).expect("unscale");
        assert_eq!(raw, RawValue::Unsigned(1250));
        let v = to_physical(RawValue::Signed(-40), 0.5, 10.0).expect("offset");
        assert_eq!(v, Value::Float(-10.0));
        assert_eq!(
            to_physical(RawValue::Unsigned(7), 1.0, 0.0),
            Ok(Value::Integer(7))
        );
    }
}
