//! Address-book groups: a name that stands for a list of addresses, and the expansion of a
//! To/Cc field in which group names and addresses are mixed.
//!
//! Rules:
//! - A group name is 1 to [`MAX_GROUP_NAME_LEN`] characters: letters, digits, spaces, `-`
//!   and `_`. Leading and trailing spaces are dropped and inner runs of spaces count as one
//!   (`"Book  club"` is `"Book club"`). It never contains `@`, so it can never be mistaken
//!   for an address.
//! - Names are unique without regard to case: `Team` and `team` are the same group (its
//!   [`key`](Group::key)); the group keeps the spelling it was saved with.
//! - Members are addresses only (not other groups), at least one, each once, in the order
//!   given.
//! - In a To/Cc field, parts are separated by `,`, `;` or new lines. Within a part, words
//!   containing `@` are addresses and the runs of words between them are group names, so
//!   `Book club, bob@h` and `book club bob@h` both name the group "Book club" and Bob.
//!   Every group name expands to its members; the result lists each address once, in the
//!   order first met. A name that is no group is an error that names it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::address::{parse_address_list, Address, AddressError};

/// Longest group name, in characters.
pub const MAX_GROUP_NAME_LEN: usize = 40;

/// Why a group was refused. The text is shown to people as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("the group needs a name")]
    EmptyName,
    #[error("a group name is at most {MAX_GROUP_NAME_LEN} characters")]
    NameTooLong,
    #[error("a group name may contain only letters, digits, spaces, '-' and '_' (not “{0}”)")]
    BadNameCharacter(char),
    #[error("the group needs at least one member")]
    NoMembers,
    #[error("“{part}” is not an address ({error})")]
    BadMember { part: String, error: AddressError },
}

/// Why a To/Cc field could not be turned into addresses. The text is shown to people as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipientError {
    #[error("“{part}” is not an address ({error})")]
    BadAddress { part: String, error: AddressError },
    #[error("no contact group named “{0}”")]
    UnknownGroup(String),
}

/// Checks and normalises a group name (trimmed, inner spaces collapsed; case kept).
pub fn validate_group_name(name: &str) -> Result<String, GroupError> {
    let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
    if name.is_empty() {
        return Err(GroupError::EmptyName);
    }
    if name.chars().count() > MAX_GROUP_NAME_LEN {
        return Err(GroupError::NameTooLong);
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_alphanumeric() || matches!(c, ' ' | '-' | '_')))
    {
        return Err(GroupError::BadNameCharacter(c));
    }
    Ok(name)
}

/// The case-insensitive identity of a group name (what stores key groups by).
pub fn group_key(name: &str) -> String {
    name.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// A named list of addresses in the address book. Always valid: made by [`Group::new`] or
/// [`Group::parse`], and checked again when read back from a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "GroupFields", into = "GroupFields")]
pub struct Group {
    name: String,
    members: Vec<Address>,
}

/// The serialised form of a [`Group`] (`{"name": …, "members": […]}`).
#[derive(Serialize, Deserialize)]
struct GroupFields {
    name: String,
    members: Vec<Address>,
}

impl TryFrom<GroupFields> for Group {
    type Error = GroupError;
    fn try_from(f: GroupFields) -> Result<Self, GroupError> {
        Group::new(&f.name, f.members)
    }
}

impl From<Group> for GroupFields {
    fn from(g: Group) -> Self {
        GroupFields {
            name: g.name,
            members: g.members,
        }
    }
}

impl Group {
    /// A group named `name` (see [`validate_group_name`]) with `members`, each kept once in
    /// the order given.
    pub fn new(name: &str, members: Vec<Address>) -> Result<Group, GroupError> {
        let name = validate_group_name(name)?;
        let mut unique: Vec<Address> = Vec::with_capacity(members.len());
        for m in members {
            if !unique.contains(&m) {
                unique.push(m);
            }
        }
        if unique.is_empty() {
            return Err(GroupError::NoMembers);
        }
        Ok(Group {
            name,
            members: unique,
        })
    }

    /// A group from what a person typed: a name and an address list (`a@h, b@h`).
    pub fn parse(name: &str, members: &str) -> Result<Group, GroupError> {
        let name = validate_group_name(name)?;
        let members = parse_address_list(members)
            .map_err(|(part, error)| GroupError::BadMember { part, error })?;
        Group::new(&name, members)
    }

    /// The name as saved.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The case-insensitive identity of the name.
    pub fn key(&self) -> String {
        group_key(&self.name)
    }
    pub fn members(&self) -> &[Address] {
        &self.members
    }
}

/// Turns a To/Cc field of addresses and group names into addresses: each group name
/// expands to its members, and each address is listed once, in the order first met.
pub fn expand_recipients<'a>(
    field: &str,
    groups: impl IntoIterator<Item = &'a Group>,
) -> Result<Vec<Address>, RecipientError> {
    let groups: HashMap<String, &Group> = groups.into_iter().map(|g| (g.key(), g)).collect();
    let mut out: Vec<Address> = Vec::new();
    fn push(a: &Address, out: &mut Vec<Address>) {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    for part in field.split([',', ';', '\n']) {
        let mut name: Vec<&str> = Vec::new();
        // The words of `part`, then an end marker that ends the last group name.
        for word in part.split_whitespace().map(Some).chain([None]) {
            if word.is_some_and(|w| !w.contains('@')) {
                name.extend(word);
                continue;
            }
            if !name.is_empty() {
                let typed = name.join(" ");
                name.clear();
                if validate_group_name(&typed).is_err() {
                    // Not even a possible group name: most likely a mistyped address.
                    let error = typed
                        .parse::<Address>()
                        .err()
                        .unwrap_or(AddressError::MissingAt);
                    return Err(RecipientError::BadAddress { part: typed, error });
                }
                let group = groups
                    .get(&group_key(&typed))
                    .ok_or(RecipientError::UnknownGroup(typed))?;
                for m in group.members() {
                    push(m, &mut out);
                }
            }
            if let Some(word) = word {
                let a: Address = word.parse().map_err(|error| RecipientError::BadAddress {
                    part: word.to_string(),
                    error,
                })?;
                push(&a, &mut out);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Address {
        s.parse().unwrap()
    }

    fn group(name: &str, members: &[&str]) -> Group {
        Group::new(name, members.iter().map(|m| a(m)).collect()).unwrap()
    }

    #[test]
    fn names() {
        assert_eq!(validate_group_name("  Book   club ").unwrap(), "Book club");
        assert_eq!(validate_group_name("team-2_b").unwrap(), "team-2_b");
        assert_eq!(validate_group_name("Équipe").unwrap(), "Équipe");
        assert_eq!(validate_group_name("   "), Err(GroupError::EmptyName));
        assert_eq!(validate_group_name(""), Err(GroupError::EmptyName));
        assert_eq!(
            validate_group_name("bob@h"),
            Err(GroupError::BadNameCharacter('@'))
        );
        assert_eq!(
            validate_group_name("a,b"),
            Err(GroupError::BadNameCharacter(','))
        );
        assert_eq!(
            validate_group_name("x.y"),
            Err(GroupError::BadNameCharacter('.'))
        );
        assert!(validate_group_name(&"é".repeat(40)).is_ok());
        assert_eq!(
            validate_group_name(&"a".repeat(41)),
            Err(GroupError::NameTooLong)
        );
        assert_eq!(group_key(" Book  Club "), "book club");
        assert_eq!(group("TEAM", &["bob@h"]).key(), "team");
        assert_eq!(
            GroupError::BadNameCharacter('@').to_string(),
            "a group name may contain only letters, digits, spaces, '-' and '_' (not “@”)"
        );
    }

    #[test]
    fn groups_need_members_once_each() {
        let g = Group::parse("team", "bob@h, carol@h; Bob@H").unwrap();
        assert_eq!(g.name(), "team");
        assert_eq!(g.members(), &[a("bob@h"), a("carol@h")]);
        assert_eq!(Group::parse("team", " "), Err(GroupError::NoMembers));
        assert_eq!(Group::new("team", vec![]), Err(GroupError::NoMembers));
        let e = Group::parse("team", "bob@h, carol").unwrap_err();
        assert_eq!(
            e,
            GroupError::BadMember {
                part: "carol".into(),
                error: AddressError::MissingAt
            }
        );
        assert_eq!(
            e.to_string(),
            "“carol” is not an address (an address looks like name@host)"
        );
        assert_eq!(
            Group::parse("", "bob@h"),
            Err(GroupError::EmptyName),
            "the name is checked first"
        );
    }

    #[test]
    fn serde_round_trip_checks_again() {
        let g = group("Book club", &["bob@h", "carol@h"]);
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(
            json,
            r#"{"name":"Book club","members":["bob@h","carol@h"]}"#
        );
        assert_eq!(serde_json::from_str::<Group>(&json).unwrap(), g);
        assert!(serde_json::from_str::<Group>(r#"{"name":"x@y","members":["bob@h"]}"#).is_err());
        assert!(serde_json::from_str::<Group>(r#"{"name":"x","members":[]}"#).is_err());
    }

    #[test]
    fn expansion() {
        let team = group("Team", &["bob@h", "carol@h"]);
        let club = group("Book club", &["dan@h", "bob@h"]);
        let groups = [team.clone(), club.clone()];
        let x = |field: &str| expand_recipients(field, &groups);
        // Plain addresses as before: separators, duplicates dropped, order kept.
        assert_eq!(
            x("a@h, b@h;c@h  a@h").unwrap(),
            vec![a("a@h"), a("b@h"), a("c@h")]
        );
        assert_eq!(x("").unwrap(), vec![]);
        assert_eq!(x(" , ;\n").unwrap(), vec![]);
        // A group name, any case, expands to its members.
        assert_eq!(x("team").unwrap(), vec![a("bob@h"), a("carol@h")]);
        assert_eq!(x(" TEAM ").unwrap(), vec![a("bob@h"), a("carol@h")]);
        // A member also typed explicitly is listed once, where first met.
        assert_eq!(x("carol@h, team").unwrap(), vec![a("carol@h"), a("bob@h")]);
        assert_eq!(
            x("team, bob@h, alice@h").unwrap(),
            vec![a("bob@h"), a("carol@h"), a("alice@h")]
        );
        // Names with spaces, with or without commas around addresses; overlapping groups.
        assert_eq!(
            x("book  club, team").unwrap(),
            vec![a("dan@h"), a("bob@h"), a("carol@h")]
        );
        assert_eq!(
            x("alice@h book club eve@h").unwrap(),
            vec![a("alice@h"), a("dan@h"), a("bob@h"), a("eve@h")]
        );
        // Unknown names are named in the error.
        assert_eq!(
            x("bob@h, teem"),
            Err(RecipientError::UnknownGroup("teem".into()))
        );
        assert_eq!(
            x("teem").unwrap_err().to_string(),
            "no contact group named “teem”"
        );
        assert_eq!(
            x("team carol"),
            Err(RecipientError::UnknownGroup("team carol".into()))
        );
        // Something that cannot be a group name is reported as a bad address.
        assert_eq!(
            x("bob.example"),
            Err(RecipientError::BadAddress {
                part: "bob.example".into(),
                error: AddressError::MissingAt
            })
        );
        assert_eq!(
            x("team, bob@").unwrap_err().to_string(),
            "“bob@” is not an address (the host part of the address is not valid)"
        );
        // No groups at all: every name is unknown.
        assert_eq!(
            expand_recipients("team", &Vec::<Group>::new()),
            Err(RecipientError::UnknownGroup("team".into()))
        );
    }
}
