//! `#[serde(with = "crate::wire::bytes")]` for `Vec<u8>` fields: a byte string, not a
//! sequence of numbers. The encoding is the same in both formats the wire uses (`postcard`
//! writes a length and the bytes either way; JSON an array of numbers), so this changes no
//! frame: it only spares a call per byte when a 60 KiB chunk is encoded or decoded.

use std::fmt;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Serializer;

pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(BytesVisitor)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Plain {
        a: u32,
        data: Vec<u8>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Bytes {
        a: u32,
        #[serde(with = "super")]
        data: Vec<u8>,
    }

    #[test]
    fn same_encoding_as_a_plain_vec_in_postcard_and_json() {
        for len in [0usize, 1, 127, 128, 300, 61_456] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let plain = Plain {
                a: 9,
                data: data.clone(),
            };
            let bytes = Bytes { a: 9, data };
            let p = postcard::to_allocvec(&plain).unwrap();
            assert_eq!(p, postcard::to_allocvec(&bytes).unwrap());
            assert_eq!(postcard::from_bytes::<Bytes>(&p).unwrap(), bytes);
            let j = serde_json::to_string(&plain).unwrap();
            assert_eq!(j, serde_json::to_string(&bytes).unwrap());
            assert_eq!(serde_json::from_str::<Bytes>(&j).unwrap(), bytes);
        }
    }
}
