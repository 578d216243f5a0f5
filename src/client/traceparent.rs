//! W3C Trace Context: make a fresh `traceparent` for each request and parse one.
//!
//! Format: `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`; the
//! sampled flag `01` asks the server to record a span (vLLM records none for `00`).

use rand::Rng;

/// The ids carried by a `traceparent` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
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
            trace_id,
            span_id,
            sampled: true,
        }
    }

    /// The header value.
    pub fn header_value(&self) -> String {
        format!(
            "00-{}-{}-{}",
            hex(&self.trace_id),
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
            trace_id,
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
    if text.len() % 2 != 0 {
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
        assert_eq!(hex(&fixture.trace_id), "00112233445566778899aabbccddeeff");
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
}
