//! Human-readable byte sizes (`8MiB`, `512 MB`, `4096`) for configuration files and flags.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes, written in configs as `8MiB`, `1.5GiB`, `500MB` or a bare integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const KIB: u64 = 1 << 10;
    pub const MIB: u64 = 1 << 20;
    pub const GIB: u64 = 1 << 30;
    pub const TIB: u64 = 1 << 40;

    pub const fn mib(n: u64) -> Self {
        Self(n * Self::MIB)
    }

    pub const fn gib(n: u64) -> Self {
        Self(n * Self::GIB)
    }

    pub const fn bytes(self) -> u64 {
        self.0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid byte size {input:?}: expected a number with an optional unit (B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)")]
pub struct ParseByteSizeError {
    input: String,
}

impl FromStr for ByteSize {
    type Err = ParseByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseByteSizeError { input: s.to_owned() };
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => Self::KIB,
            "m" | "mib" => Self::MIB,
            "g" | "gib" => Self::GIB,
            "t" | "tib" => Self::TIB,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(err()),
        };
        if num.is_empty() {
            return Err(err());
        }
        if let Ok(n) = num.parse::<u64>() {
            return n.checked_mul(mult).map(ByteSize).ok_or_else(err);
        }
        let f: f64 = num.parse().map_err(|_| err())?;
        let v = f * mult as f64;
        if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
            return Err(err());
        }
        Ok(ByteSize(v.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [(Self::TIB, "TiB"), (Self::GIB, "GiB"), (Self::MIB, "MiB"), (Self::KIB, "KiB")];
        for (size, name) in units {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{}", self.0 / size, name);
            }
        }
        for (size, name) in units {
            if self.0 >= size {
                return write!(f, "{:.2}{}", self.0 as f64 / size as f64, name);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Free space to keep on a device: a share of its size (`"10%"`, like JuiceFS's
/// `free-space-ratio`) or a byte size (`"2GiB"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceReserve {
    /// Hundredths of a percent of the device's size (`"10%"` is 1000).
    Share(u32),
    Bytes(ByteSize),
}

/// Hundredths of a percent in a whole device.
const SHARE_WHOLE: u64 = 10_000;

impl SpaceReserve {
    pub const fn percent(n: u32) -> Self {
        Self::Share(n * 100)
    }

    /// The bytes kept free on a device of `total` bytes.
    pub fn bytes_of(self, total: u64) -> u64 {
        match self {
            Self::Share(s) => (u128::from(total) * u128::from(s) / u128::from(SHARE_WHOLE)) as u64,
            Self::Bytes(b) => b.bytes(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid free-space reserve {input:?}: expected a share below 100% (\"10%\") or a byte size (\"2GiB\")")]
pub struct ParseSpaceReserveError {
    input: String,
}

impl FromStr for SpaceReserve {
    type Err = ParseSpaceReserveError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseSpaceReserveError { input: s.to_owned() };
        let t = s.trim();
        match t.strip_suffix('%') {
            Some(num) => {
                let p: f64 = num.trim().parse().map_err(|_| err())?;
                if !(0.0..100.0).contains(&p) {
                    return Err(err());
                }
                Ok(Self::Share((p * 100.0).round() as u32))
            }
            None => t.parse::<ByteSize>().map(Self::Bytes).map_err(|_| err()),
        }
    }
}

impl fmt::Display for SpaceReserve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Share(s) if s % 100 == 0 => write!(f, "{}%", s / 100),
            Self::Share(s) => write!(f, "{}.{:02}%", s / 100, s % 100),
            Self::Bytes(b) => b.fmt(f),
        }
    }
}

impl Serialize for SpaceReserve {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for SpaceReserve {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Self::Bytes(ByteSize(n))),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("8MiB".parse(), Ok(ByteSize(8 << 20)));
        assert_eq!("8 MiB".parse(), Ok(ByteSize(8 << 20)));
        assert_eq!("4096".parse(), Ok(ByteSize(4096)));
        assert_eq!("1.5GiB".parse(), Ok(ByteSize(3 << 29)));
        assert_eq!("500MB".parse(), Ok(ByteSize(500_000_000)));
        assert_eq!("2g".parse(), Ok(ByteSize(2 << 30)));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "MiB", "8XB", "-1", "1e999GiB", "99999999999999999999TiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn displays_round_trip() {
        for v in [0, 1, 1023, 1024, 8 << 20, 3 << 29, 5 << 40] {
            let s = ByteSize(v).to_string();
            if v % 1024 == 0 || v < 1024 {
                assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(v)), "{s}");
            }
        }
        assert_eq!(ByteSize(8 << 20).to_string(), "8MiB");
    }

    #[test]
    fn space_reserves() {
        assert_eq!("10%".parse(), Ok(SpaceReserve::percent(10)));
        assert_eq!("0.5 %".parse(), Ok(SpaceReserve::Share(50)));
        assert_eq!("2GiB".parse(), Ok(SpaceReserve::Bytes(ByteSize::gib(2))));
        for bad in ["100%", "-1%", "%", "ten%", "1e999%"] {
            assert!(bad.parse::<SpaceReserve>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(SpaceReserve::percent(10).bytes_of(1000), 100);
        assert_eq!(SpaceReserve::Share(50).bytes_of(u64::MAX), u64::MAX / 200);
        assert_eq!(SpaceReserve::Bytes(ByteSize(7)).bytes_of(1000), 7);
        for r in ["10%", "0.25%", "2GiB"] {
            assert_eq!(r.parse::<SpaceReserve>().map(|v| v.to_string()).as_deref(), Ok(r));
        }
    }
}
