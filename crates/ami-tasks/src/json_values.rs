//! JSON values in task results: `#[serde(with = "crate::json_values")]` on a
//! `BTreeMap<String, Value>` field.
//!
//! Task results travel as bincode, which cannot carry a self-describing `serde_json::Value` (its
//! `Deserialize` asks the format what comes next). Binary formats get each value as a tagged
//! tree instead (a variant per kind of value, numbers as the `u64`, `i64` or `f64` they hold,
//! exactly), decoded straight into `Value`; an array of one kind of number (histogram counts and
//! edges, waveforms: most of what results hold) goes packed, as a `Vec<u64>` or `Vec<f64>`.
//! Human-readable formats (JSON) get the values as they are.
//!
//! Until session 15 the values travelled as JSON text (and a float could come back a bit off).
//! On a fast scalar stream the global reducer sends about 54,000 bins a second to the driver,
//! each with a strip chart and a 100-bin histogram: a bin took 10.6 µs to send and read back as
//! text, 3.4 µs now (1.2 to encode, 2.1 to decode; a generic tagged tree without the packed arrays
//! took 9 µs to decode). The scalar benchmark went from 2.59-2.64M to 2.88-3.25M events/s after
//! start-up (docs/benchmarks.md, session 15).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, EnumAccess, SeqAccess, VariantAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Number, Value};

pub fn serialize<S: Serializer>(values: &BTreeMap<String, Value>, serializer: S) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        return values.serialize(serializer);
    }
    let mut map = serializer.serialize_map(Some(values.len()))?;
    for (name, value) in values {
        map.serialize_entry(name, &Tagged(value))?;
    }
    map.end()
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, Value>, D::Error> {
    if deserializer.is_human_readable() {
        return BTreeMap::deserialize(deserializer);
    }
    let tagged = BTreeMap::<String, Untagged>::deserialize(deserializer)?;
    Ok(tagged.into_iter().map(|(name, value)| (name, value.0)).collect())
}

const ENUM: &str = "JsonValue";
const VARIANTS: &[&str] = &["null", "bool", "u64", "i64", "f64", "string", "array", "object", "u64s", "f64s"];

/// A value written as the variant of its kind.
struct Tagged<'a>(&'a Value);

impl Serialize for Tagged<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => serializer.serialize_unit_variant(ENUM, 0, VARIANTS[0]),
            Value::Bool(b) => serializer.serialize_newtype_variant(ENUM, 1, VARIANTS[1], b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    serializer.serialize_newtype_variant(ENUM, 2, VARIANTS[2], &u)
                } else if let Some(i) = n.as_i64() {
                    serializer.serialize_newtype_variant(ENUM, 3, VARIANTS[3], &i)
                } else {
                    // A `Value` holds finite numbers only: every other one is an f64.
                    serializer.serialize_newtype_variant(ENUM, 4, VARIANTS[4], &n.as_f64().unwrap_or(0.0))
                }
            }
            Value::String(s) => serializer.serialize_newtype_variant(ENUM, 5, VARIANTS[5], s),
            Value::Array(items) => match NumberArray::of(items) {
                // Arrays of one kind of number (histogram counts, edges, waveforms) go packed: they
                // are most of the values, and an element each way costs several times more.
                Some(NumberArray::U64(numbers)) => serializer.serialize_newtype_variant(ENUM, 8, VARIANTS[8], &numbers),
                Some(NumberArray::F64(numbers)) => serializer.serialize_newtype_variant(ENUM, 9, VARIANTS[9], &numbers),
                None => serializer.serialize_newtype_variant(ENUM, 6, VARIANTS[6], &TaggedSeq(items)),
            },
            Value::Object(map) => serializer.serialize_newtype_variant(ENUM, 7, VARIANTS[7], &TaggedMap(map)),
        }
    }
}

/// The numbers of an array whose items are all non-negative integers, or all floats.
enum NumberArray {
    U64(Vec<u64>),
    F64(Vec<f64>),
}

impl NumberArray {
    fn of(items: &[Value]) -> Option<Self> {
        let first = items.first()?.as_number()?;
        if first.is_u64() {
            items
                .iter()
                .map(|v| v.as_number().and_then(Number::as_u64))
                .collect::<Option<_>>()
                .map(Self::U64)
        } else if first.is_f64() {
            let float = |v: &Value| v.as_number().filter(|n| n.is_f64()).and_then(Number::as_f64);
            items.iter().map(float).collect::<Option<_>>().map(Self::F64)
        } else {
            None
        }
    }
}

struct TaggedSeq<'a>(&'a [Value]);

impl Serialize for TaggedSeq<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            seq.serialize_element(&Tagged(item))?;
        }
        seq.end()
    }
}

struct TaggedMap<'a>(&'a Map<String, Value>);

impl Serialize for TaggedMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, &Tagged(value))?;
        }
        map.end()
    }
}

/// A value read from its variant.
struct Untagged(Value);

impl<'de> Deserialize<'de> for Untagged {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_enum(ENUM, VARIANTS, ValueVisitor).map(Untagged)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a tagged JSON value")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (kind, variant) = data.variant::<u32>()?;
        Ok(match kind {
            0 => {
                variant.unit_variant()?;
                Value::Null
            }
            1 => Value::Bool(variant.newtype_variant()?),
            2 => Value::Number(variant.newtype_variant::<u64>()?.into()),
            3 => Value::Number(variant.newtype_variant::<i64>()?.into()),
            4 => {
                let f = variant.newtype_variant::<f64>()?;
                Value::Number(Number::from_f64(f).ok_or_else(|| de::Error::custom(format!("{f} is not a JSON number")))?)
            }
            5 => Value::String(variant.newtype_variant()?),
            6 => Value::Array(variant.newtype_variant_seed(SeqSeed)?),
            7 => Value::Object(
                variant
                    .newtype_variant::<Vec<(String, Untagged)>>()?
                    .into_iter()
                    .map(|(key, value)| (key, value.0))
                    .collect(),
            ),
            8 => Value::Array(variant.newtype_variant::<Vec<u64>>()?.into_iter().map(Value::from).collect()),
            9 => Value::Array(
                variant
                    .newtype_variant::<Vec<f64>>()?
                    .into_iter()
                    .map(|f| Number::from_f64(f).map(Value::Number))
                    .collect::<Option<_>>()
                    .ok_or_else(|| de::Error::custom("an array holds a float that is not a JSON number"))?,
            ),
            other => return Err(de::Error::custom(format!("unknown JSON value kind {other}"))),
        })
    }
}

/// An array's items, read straight into the `Vec<Value>` the array keeps.
struct SeqSeed;

impl<'de> DeserializeSeed<'de> for SeqSeed {
    type Value = Vec<Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Value>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for SeqSeed {
    type Value = Vec<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of tagged JSON values")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Value>, A::Error> {
        // Bounded: the length comes from the data, which may be damaged.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Untagged(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Carrier {
        #[serde(with = "super")]
        values: BTreeMap<String, Value>,
    }

    fn every_kind() -> Carrier {
        let values = [
            ("null", json!(null)),
            ("flags", json!([true, false])),
            ("counts", json!([0, 1, u64::MAX])),
            ("negative", json!(i64::MIN)),
            ("mean", json!(-1.5e-300)),
            (
                "histogram",
                json!({"edges": [0.0, 0.5, 1.0], "counts": [3, 4], "under": 0, "label": "énergie"}),
            ),
            ("nested", json!([[], {}, [{"a": [1.25, null, "x"]}]])),
            // Packed: only arrays of one kind of number.
            ("waveform", json!([0.25, -1.5, 1e300])),
            ("mixed", json!([1, 0.5, -2])),
            ("signed", json!([-1, 2])),
        ];
        Carrier {
            values: values.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }

    fn bincode_config() -> bincode::config::Configuration {
        bincode::config::standard()
    }

    #[test]
    fn every_kind_of_value_survives_bincode() {
        let carrier = every_kind();
        let bytes = bincode::serde::encode_to_vec(&carrier, bincode_config()).unwrap();
        let (back, read): (Carrier, usize) = bincode::serde::decode_from_slice(&bytes, bincode_config()).unwrap();
        assert_eq!(read, bytes.len());
        // Exactly: the f64s too, bit for bit.
        assert_eq!(back, carrier);
        // Numbers keep their kind: an integer stays an integer.
        assert!(back.values["counts"][2].is_u64() && back.values["negative"].is_i64() && back.values["mean"].is_f64());
        assert!(back.values["mixed"][0].is_u64() && back.values["mixed"][1].is_f64() && back.values["signed"][0].is_i64());
    }

    #[test]
    fn json_gets_the_values_as_they_are() {
        let mut carrier = every_kind();
        // serde_json's own float parsing may miss the last bit of such a number (it did, with the
        // JSON text these values travelled as before); bincode carries it exactly (above).
        carrier.values.insert("mean".into(), json!(-1.5));
        let text = serde_json::to_string(&carrier).unwrap();
        let plain: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(plain["values"]["histogram"]["counts"], json!([3, 4]));
        assert_eq!(serde_json::from_str::<Carrier>(&text).unwrap(), carrier);
    }

    #[test]
    fn damaged_data_is_an_error() {
        let bytes = bincode::serde::encode_to_vec(every_kind(), bincode_config()).unwrap();
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            assert!(bincode::serde::decode_from_slice::<Carrier, _>(&bytes[..cut], bincode_config()).is_err());
        }
        // An unknown kind of value.
        let mut one = BTreeMap::new();
        one.insert("x".to_string(), json!(null));
        let mut bytes = bincode::serde::encode_to_vec(Carrier { values: one }, bincode_config()).unwrap();
        *bytes.last_mut().unwrap() = 10;
        let error = bincode::serde::decode_from_slice::<Carrier, _>(&bytes, bincode_config()).unwrap_err();
        assert!(error.to_string().contains("unknown JSON value kind 10"), "{error}");
        // A packed float that no JSON number can hold.
        let mut bytes = vec![1, 1, b'x', 9, 1];
        bytes.extend_from_slice(&f64::NAN.to_le_bytes());
        let error = bincode::serde::decode_from_slice::<Carrier, _>(&bytes, bincode_config()).unwrap_err();
        assert!(error.to_string().contains("not a JSON number"), "{error}");
    }
}
