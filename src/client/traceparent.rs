//! W3C Trace Context: the 16-byte [`TraceId`], a fresh `traceparent` for each
//! request, and parsing one.
//!
//! Format: `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`; the
//! sampled flag `01` asks the server to record a span (vLLM records none for `00`).

use rand::Rng;
use std::fmt;
use std::str::FromStr;

/// A W3C / OpenTelemetry trace id: 16 bytes, written as 32 lower-case hex
/// characters (in records, `spans.jsonl` keys and URLs); read in either case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TraceId([u8; 16]);

impl TraceId {
    /// The id of these bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 bytes.
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0
    }
}

impl From<[u8; 16]> for TraceId {
    fn from(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

/// Why a text is not a trace id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a trace id (32 hex characters)")]
pub struct BadTraceId(String);

impl FromStr for TraceId {
    type Err = BadTraceId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != 32 {
            return Err(BadTraceId(text.to_string()));
        }
        unhex(text)
            .and_then(|bytes| bytes.try_into().ok())
            .map(Self)
            .ok_or_else(|| BadTraceId(text.to_string()))
    }
}

impl serde::Serialize for TraceId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex(&self.0))
    }
}

impl<'de> serde::Deserialize<'de> for TraceId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The ids carried by a `traceparent` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceParent {
    /// Random non-zero ids, sampled.
    pub fn random(rng: &mut impl Rng) -> Self {
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        while trace_id == [0; 16] {
            rng.fill(&mut trace_id);
        }
        while span_id == [0; 8] {
            rng.fill(&mut span_id);
        }
        Self {
            trace_id: TraceId(trace_id),
            span_id,
            sampled: true,
        }
    }

    /// The same ids with the trace id's leading bytes replaced by `prefix`
    /// (a shard's index, so trace ids of different shards never collide).
    pub fn with_prefix(mut self, prefix: [u8; 2]) -> Self {
        self.trace_id.0[..2].copy_from_slice(&prefix);
        self
    }

    /// The header value.
    pub fn header_value(&self) -> String {
        format!(
            "00-{}-{}-{}",
            self.trace_id,
            hex(&self.span_id),
            if self.sampled { "01" } else { "00" }
        )
    }

    /// Parses a header value; `None` when malformed or the ids are all zero.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let span = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2
            || version == "ff"
            || trace.len() != 32
            || span.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id: [u8; 16] = unhex(trace)?.try_into().ok()?;
        let span_id: [u8; 8] = unhex(span)?.try_into().ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id: TraceId(trace_id),
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Bytes of a hex string (either case); `None` when not hex or of odd length.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_malformed() {
        let tp = TraceParent::random(&mut rand::rng());
        let value = tp.header_value();
        assert_eq!(value.len(), 55);
        assert_eq!(TraceParent::parse(&value), Some(tp));
        let fixture =
            TraceParent::parse("00-00112233445566778899aabbccddeeff-0123456789abcdef-01").unwrap();
        assert_eq!(
            fixture.trace_id.to_string(),
            "00112233445566778899aabbccddeeff"
        );
        assert!(fixture.sampled);
        let unsampled =
            TraceParent::parse("00-deaddeaddeaddeaddeaddeaddeaddead-beefbeefbeefbeef-00").unwrap();
        assert!(!unsampled.sampled);
        for bad in [
            "",
            "00-0011-0123456789abcdef-01",
            "00-00000000000000000000000000000000-0123456789abcdef-01",
            "00-00112233445566778899aabbccddeeff-0000000000000000-01",
            "00-00112233445566778899aabbccddeefg-0123456789abcdef-01",
            "ff-00112233445566778899aabbccddeeff-0123456789abcdef-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn trace_ids_are_lower_case_hex_in_json_and_read_in_either_case() {
        let id: TraceId = "00112233445566778899AABBCCDDEEFF".parse().unwrap();
        assert_eq!(id.to_bytes()[15], 0xff);
        assert_eq!(id.to_string(), "00112233445566778899aabbccddeeff");
        assert_eq!(
            serde_json::to_string(&Some(id)).unwrap(),
            r#""00112233445566778899aabbccddeeff""#
        );
        let back: Option<TraceId> =
            serde_json::from_str(r#""00112233445566778899aabbccddeeff""#).unwrap();
        assert_eq!(back, Some(id));
        let none: Option<TraceId> = serde_json::from_str("null").unwrap();
        assert_eq!(none, None);
        for bad in [
            r#""0011""#,
            r#""00112233445566778899aabbccddeefg""#,
            r#""00112233445566778899aabbccddeeff00""#,
            r#""é0112233445566778899aabbccddeef""#,
            "17",
        ] {
            assert!(serde_json::from_str::<TraceId>(bad).is_err(), "{bad}");
        }
    }
}
