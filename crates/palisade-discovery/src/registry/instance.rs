//! One instance of a service, as a provider registers it: its fields, their
//! validation (nothing from a registry can make the client panic), and the
//! text encoding the etcd backend stores.

use std::collections::BTreeMap;
use std::fmt;

use palisade_core::peer::PeerId;

/// The longest service name, address, zone or metadata entry accepted.
pub const MAX_FIELD_LEN: usize = 512;
/// The most metadata entries an instance may carry.
pub const MAX_METADATA: usize = 32;

/// One instance of a service, as a provider registers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    service: String,
    addr: String,
    zone: Option<String>,
    weight: u32,
    metadata: BTreeMap<String, String>,
}

impl Instance {
    /// An instance of `service` at `addr` (`host:port`), weight 1, no zone.
    pub fn new(service: impl Into<String>, addr: impl fmt::Display) -> Self {
        Self {
            service: service.into(),
            addr: addr.to_string(),
            zone: None,
            weight: 1,
            metadata: BTreeMap::new(),
        }
    }

    /// Sets the zone (availability zone, rack).
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Sets the weight (relative share of traffic; 0 counts as 1).
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Adds a metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The address, `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The zone, if set.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// The weight, at least 1.
    pub fn weight(&self) -> u32 {
        self.weight.max(1)
    }

    /// The metadata.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The instance's identity within its service: its address.
    pub fn id(&self) -> PeerId {
        PeerId::new(&self.addr)
    }

    /// Checks the fields: non-empty service and address, no control
    /// characters or `=`/whitespace where they would break the encoding, and
    /// lengths within [`MAX_FIELD_LEN`] and [`MAX_METADATA`]. The address must
    /// be `host:port`: the port a number up to 65535, the host an IPv4
    /// literal, a bracketed IPv6 literal (`[::1]:80`) or a DNS name of ASCII
    /// letters, digits, `.` and `-` — so that a client can always be made
    /// from it (`http://{addr}` is a valid URI).
    pub fn validate(&self) -> Result<(), InvalidInstance> {
        fn field(name: &'static str, value: &str, allow_space: bool) -> Result<(), InvalidInstance> {
            if value.is_empty() {
                return Err(InvalidInstance::new(format!("{name} is empty")));
            }
            if value.len() > MAX_FIELD_LEN {
                return Err(InvalidInstance::new(format!(
                    "{name} is {} bytes long, more than {MAX_FIELD_LEN}",
                    value.len()
                )));
            }
            if value
                .chars()
                .any(|c| c.is_control() || (!allow_space && c.is_whitespace()))
            {
                return Err(InvalidInstance::new(format!("{name} {value:?} has invalid characters")));
            }
            Ok(())
        }
        field("service", &self.service, false)?;
        field("addr", &self.addr, false)?;
        check_addr(&self.addr)?;
        if let Some(zone) = &self.zone {
            field("zone", zone, false)?;
        }
        if self.metadata.len() > MAX_METADATA {
            return Err(InvalidInstance::new(format!(
                "{} metadata entries, more than {MAX_METADATA}",
                self.metadata.len()
            )));
        }
        for (k, v) in &self.metadata {
            field("metadata key", k, false)?;
            if k.contains('=') {
                return Err(InvalidInstance::new(format!("metadata key {k:?} contains '='")));
            }
            if !v.is_empty() {
                field("metadata value", v, true)?;
            }
        }
        Ok(())
    }

    /// Encodes the instance as text, one `key=value` per line, as the etcd
    /// backend stores it.
    pub fn encode(&self) -> String {
        let mut out = format!("service={}\naddr={}\nweight={}\n", self.service, self.addr, self.weight);
        if let Some(zone) = &self.zone {
            out.push_str(&format!("zone={zone}\n"));
        }
        for (k, v) in &self.metadata {
            out.push_str(&format!("meta.{k}={v}\n"));
        }
        out
    }

    /// Decodes what [`encode`](Self::encode) wrote, validating it. Never
    /// panics, whatever the input.
    pub fn decode(text: &str) -> Result<Instance, InvalidInstance> {
        let max = (MAX_FIELD_LEN + 16) * (MAX_METADATA + 4);
        if text.len() > max {
            return Err(InvalidInstance::new(format!(
                "value is {} bytes long, more than {max}",
                text.len()
            )));
        }
        let (mut service, mut addr, mut zone, mut weight) = (None, None, None, 1u32);
        let mut metadata = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let Some((k, v)) = line.split_once('=') else {
                return Err(InvalidInstance::new(format!("line {line:?} is not key=value")));
            };
            match k {
                "service" => service = Some(v.to_owned()),
                "addr" => addr = Some(v.to_owned()),
                "zone" => zone = Some(v.to_owned()),
                "weight" => {
                    weight = v
                        .parse()
                        .map_err(|_| InvalidInstance::new(format!("weight {v:?} is not a number")))?;
                }
                _ => match k.strip_prefix("meta.") {
                    Some(key) => {
                        metadata.insert(key.to_owned(), v.to_owned());
                    }
                    None => return Err(InvalidInstance::new(format!("unknown field {k:?}"))),
                },
            }
        }
        let (Some(service), Some(addr)) = (service, addr) else {
            return Err(InvalidInstance::new("service or addr missing"));
        };
        let instance = Instance {
            service,
            addr,
            zone,
            weight,
            metadata,
        };
        instance.validate()?;
        Ok(instance)
    }
}

/// Checks that `addr` is `host:port` (see [`Instance::validate`]).
fn check_addr(addr: &str) -> Result<(), InvalidInstance> {
    let bad = |why: &str| InvalidInstance::new(format!("addr {addr:?} is not host:port: {why}"));
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(bad("no port"));
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err() {
        return Err(bad("the port is not a number in 0..=65535"));
    }
    if let Some(inner) = host.strip_prefix('[') {
        let Some(v6) = inner.strip_suffix(']') else {
            return Err(bad("unclosed '['"));
        };
        return match v6.parse::<std::net::Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(bad("not an IPv6 literal in brackets")),
        };
    }
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let name_ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !host.starts_with(['.', '-'])
        && !host.contains("..");
    if name_ok {
        Ok(())
    } else {
        Err(bad("the host is neither an IP literal nor a DNS name"))
    }
}

/// An instance was rejected: a field is empty, too long or malformed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidInstance {
    problem: String,
}

impl InvalidInstance {
    pub(crate) fn new(problem: impl Into<String>) -> Self {
        Self {
            problem: problem.into(),
        }
    }
}

impl fmt::Display for InvalidInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid instance: {}", self.problem)
    }
}

impl std::error::Error for InvalidInstance {}
