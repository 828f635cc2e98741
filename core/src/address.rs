//! Mail addresses (`local@host`) and the rules for choosing a name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest local part a person may choose.
pub const MAX_NAME_LEN: usize = 32;
/// Longest host part accepted (DNS limit).
pub const MAX_HOST_LEN: usize = 253;
/// What a storage node's address adds to its owner's name: `alice+node@relay.example` is the
/// signaling address of alice's storage node. No person can take it: `+` is not allowed in a
/// name.
pub const NODE_SUFFIX: &str = "+node";

/// Why a name or an address was refused. The text is shown to people as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("the name is empty")]
    EmptyName,
    #[error("the name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
    #[error("the name may contain only letters a-z, digits, '.', '-' and '_', and must start with a letter or digit")]
    BadNameCharacter,
    #[error("an address looks like name@host")]
    MissingAt,
    #[error("the host part of the address is not valid")]
    BadHost,
}

/// Checks and normalises (lower-cases) a chosen name, the part before `@`.
pub fn validate_name(name: &str) -> Result<String, AddressError> {
    let name = name.trim().to_ascii_lowercase();
    if name.is_empty() {
        return Err(AddressError::EmptyName);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(AddressError::NameTooLong);
    }
    let mut chars = name.chars();
    let first = chars.next().unwrap_or('-');
    if !first.is_ascii_alphanumeric() {
        return Err(AddressError::BadNameCharacter);
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
        return Err(AddressError::BadNameCharacter);
    }
    Ok(name)
}

fn validate_host(host: &str) -> Result<String, AddressError> {
    let host = host.trim().to_ascii_lowercase();
    let ok = !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        && !host.starts_with('.')
        && !host.ends_with('.');
    if ok {
        Ok(host)
    } else {
        Err(AddressError::BadHost)
    }
}

/// A Peermail address: `local@host`, always lower-case.
///
/// Serialised as the plain string form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Address {
    /// The chosen name, validated by [`validate_name`].
    local: String,
    /// The relay host that keeps this account's directory entry.
    host: String,
}

impl Address {
    /// The address `local@host`; `local` is a name, or a name followed by [`NODE_SUFFIX`]
    /// (a storage node's address).
    pub fn new(local: &str, host: &str) -> Result<Self, AddressError> {
        let local = local.trim().to_ascii_lowercase();
        let local = match local.strip_suffix(NODE_SUFFIX) {
            Some(owner) => format!("{}{NODE_SUFFIX}", validate_name(owner)?),
            None => validate_name(&local)?,
        };
        Ok(Self {
            local,
            host: validate_host(host)?,
        })
    }
    /// Whether this is the address of a person's storage node (`name+node@host`).
    pub fn is_storage_node(&self) -> bool {
        self.local.ends_with(NODE_SUFFIX)
    }
    /// The address of the storage node of this person (itself for a node's address).
    pub fn storage_node(&self) -> Address {
        if self.is_storage_node() {
            return self.clone();
        }
        Address {
            local: format!("{}{NODE_SUFFIX}", self.local),
            host: self.host.clone(),
        }
    }
    /// The person a storage node belongs to (itself for a person's address).
    pub fn owner(&self) -> Address {
        Address {
            local: self
                .local
                .strip_suffix(NODE_SUFFIX)
                .unwrap_or(&self.local)
                .to_string(),
            host: self.host.clone(),
        }
    }
    pub fn local(&self) -> &str {
        &self.local
    }
    /// `local@host`, as [`ToString::to_string`] writes it, in one allocation of the right
    /// size: addresses become text in every frame and every relay query, and the
    /// formatting machinery grew the string piece by piece.
    pub fn to_text(&self) -> String {
        let mut text = String::with_capacity(self.local.len() + 1 + self.host.len());
        text.push_str(&self.local);
        text.push('@');
        text.push_str(&self.host);
        text
    }
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (local, host) = s.rsplit_once('@').ok_or(AddressError::MissingAt)?;
        Address::new(local, host)
    }
}

impl TryFrom<String> for Address {
    type Error = AddressError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Address> for String {
    fn from(a: Address) -> String {
        a.to_text()
    }
}

/// As the text `local@host` (written straight into the output, with no copy of the address).
impl Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.local)?;
        f.write_str("@")?;
        f.write_str(&self.host)
    }
}

/// Splits a To/Cc field ("a@x, b@x; c@x") into addresses, reporting the first bad one.
pub fn parse_address_list(field: &str) -> Result<Vec<Address>, (String, AddressError)> {
    let mut out: Vec<Address> = Vec::new();
    for part in field
        .split([',', ';', ' ', '\n'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let addr: Address = part.parse().map_err(|e| (part.to_string(), e))?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text, JSON and postcard forms are those of the string `local@host`, whichever way
    /// the address is turned into text.
    #[test]
    fn an_address_is_written_as_its_text() {
        for a in ["alice@relay.example", "bob+node@h", "x@localhost"] {
            let address: Address = a.parse().unwrap();
            assert_eq!(address.to_text(), a);
            assert_eq!(address.to_string(), a);
            assert_eq!(String::from(address.clone()), a);
            assert_eq!(serde_json::to_string(&address).unwrap(), format!("\"{a}\""));
            let bytes = postcard::to_allocvec(&address).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(a).unwrap());
            assert_eq!(postcard::from_bytes::<Address>(&bytes).unwrap(), address);
            let json: Address = serde_json::from_str(&format!("\"{a}\"")).unwrap();
            assert_eq!(json, address);
        }
    }

    #[test]
    fn names() {
        assert_eq!(validate_name(" Alice ").unwrap(), "alice");
        assert_eq!(validate_name("bob.smith-2_x").unwrap(), "bob.smith-2_x");
        assert_eq!(validate_name(""), Err(AddressError::EmptyName));
        assert_eq!(validate_name("-bob"), Err(AddressError::BadNameCharacter));
        assert_eq!(validate_name("bo b"), Err(AddressError::BadNameCharacter));
        assert_eq!(validate_name("bob@x"), Err(AddressError::BadNameCharacter));
        assert_eq!(
            validate_name(&"a".repeat(33)),
            Err(AddressError::NameTooLong)
        );
    }

    #[test]
    fn addresses_round_trip() {
        let a: Address = "Alice@Relay.Example".parse().unwrap();
        assert_eq!(a.to_string(), "alice@relay.example");
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"alice@relay.example\"");
        assert_eq!(serde_json::from_str::<Address>(&json).unwrap(), a);
        assert!(serde_json::from_str::<Address>("\"nope\"").is_err());
        assert_eq!("x".parse::<Address>(), Err(AddressError::MissingAt));
        assert_eq!("x@".parse::<Address>(), Err(AddressError::BadHost));
    }

    #[test]
    fn storage_node_addresses() {
        let alice: Address = "alice@h".parse().unwrap();
        let node = alice.storage_node();
        assert_eq!(node.to_string(), "alice+node@h");
        assert!(node.is_storage_node() && !alice.is_storage_node());
        assert_eq!(node.owner(), alice);
        assert_eq!(alice.owner(), alice);
        assert_eq!(node.storage_node(), node);
        assert_eq!("Alice+Node@H".parse::<Address>().unwrap(), node);
        // Only the node suffix may follow a name, and no person may choose it.
        assert!("alice+x@h".parse::<Address>().is_err());
        assert!("+node@h".parse::<Address>().is_err());
        assert!("alice+node+node@h".parse::<Address>().is_err());
        assert_eq!(
            validate_name("alice+node"),
            Err(AddressError::BadNameCharacter)
        );
    }

    #[test]
    fn address_lists() {
        let l = parse_address_list("a@h, b@h;c@h  a@h").unwrap();
        assert_eq!(l.len(), 3);
        assert!(parse_address_list("").unwrap().is_empty());
        let (bad, _) = parse_address_list("a@h, nope").unwrap_err();
        assert_eq!(bad, "nope");
    }
}
