use std::fmt;
use std::str::FromStr;

/// A Redis Stream entry ID, `<ms>-<seq>`: the id of every event a client sees.
///
/// Ordering is by the pair (ms, seq), never by the string: `"10-0"` sorts
/// after `"9-0"` here, unlike a string comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    /// The id "before everything": Redis never assigns `0-0` to an entry.
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };

    pub const fn new(ms: u64, seq: u64) -> Self {
        EventId { ms, seq }
    }

    /// Parses a client-supplied id. Anything that is not exactly
    /// `<digits>-<digits>` (each fitting u64) is `None`: a garbled resume
    /// point is never an error, it just means "start afresh".
    pub fn parse(text: &str) -> Option<EventId> {
        let (ms, seq) = text.split_once('-')?;
        Some(EventId {
            ms: parse_digits(ms)?,
            seq: parse_digits(seq)?,
        })
    }
}

fn parse_digits(text: &str) -> Option<u64> {
    // `u64::from_str` accepts a leading '+', which is not part of an id.
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl FromStr for EventId {
    type Err = InvalidEventId;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        EventId::parse(text).ok_or(InvalidEventId)
    }
}

/// The error of [`EventId::from_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidEventId;

impl fmt::Display for InvalidEventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a stream id of the form <ms>-<seq>")
    }
}

impl std::error::Error for InvalidEventId {}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl serde::Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        EventId::parse(&text).ok_or_else(|| serde::de::Error::custom(InvalidEventId))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn orders_numerically_not_lexically() {
        let nine = EventId::parse("9-0").unwrap();
        let ten = EventId::parse("10-0").unwrap();
        assert!(ten > nine);
        assert!(EventId::parse("10-2").unwrap() > EventId::parse("10-1").unwrap());
    }

    #[test]
    fn rejects_garbled_ids() {
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1",
            "1-2-3",
            "a-1",
            "1-a",
            " 1-2",
            "1-2 ",
            "+1-2",
            "1-+2",
            "99999999999999999999999-0",
            "1_2",
            "１-２",
        ] {
            assert_eq!(EventId::parse(bad), None, "{bad:?} must not parse");
        }
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(ms in any::<u64>(), seq in any::<u64>()) {
            let id = EventId::new(ms, seq);
            prop_assert_eq!(EventId::parse(&id.to_string()), Some(id));
        }

        #[test]
        fn parse_never_panics(text in ".{0,64}") {
            let _ = EventId::parse(&text);
        }
    }
}
