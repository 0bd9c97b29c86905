//! The deserializers of the format's values: durations, addresses, CIDRs, header names.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{Deserializer, Error as _};

/// Deserializes a string with `parse`, naming `what` and the value when it fails.
pub(super) fn parse_str<'de, D, T, E>(
    deserializer: D,
    what: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    E: fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    parse(&text).map_err(|error| D::Error::custom(format_args!("invalid {what} {text:?}: {error}")))
}

pub(super) fn socket_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    parse_str(deserializer, "socket address", SocketAddr::from_str)
}

pub(super) fn header_name<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<HeaderName, D::Error> {
    parse_str(deserializer, "header name", HeaderName::from_str)
}

/// A CIDR, or a bare IP meaning just that address.
struct Cidr(IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        parse_str(deserializer, "CIDR", |text| {
            IpNet::from_str(text)
                .or_else(|error| IpAddr::from_str(text).map(IpNet::from).map_err(|_| error))
        })
        .map(Cidr)
    }
}

pub(super) fn cidrs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    // Element by element, so that an error names its index.
    let nets = Vec::<Cidr>::deserialize(deserializer)?;
    Ok(nets.into_iter().map(|Cidr(net)| net).collect())
}

/// A duration in humantime form: `"250ms"`, `"5s"`, `"1m 30s"`.
pub(super) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    parse_str(deserializer, "duration", humantime::parse_duration)
}

/// An optional [`duration`] (absent when the key is).
pub(super) fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}
