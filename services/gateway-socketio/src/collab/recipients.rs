//! Who a backend push is for: `{"user_ids": [...], "profile_ids": [...]}` (ids as strings or
//! numbers), and the identity rooms that reaches in each namespace.

use serde::Deserialize;
use serde_json::Value;

use super::identity::{Kind, MAX_ID_LEN, Participant};

/// Addressed participants, as the backend names them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(crate) struct Recipients {
    /// `/admin` users (JWT `sub`).
    #[serde(deserialize_with = "ids")]
    pub(crate) user_ids: Vec<String>,
    /// `/provider` profiles (Logto `sub`).
    #[serde(deserialize_with = "ids")]
    pub(crate) profile_ids: Vec<String>,
}

/// Ids as strings; numbers are accepted and written in decimal; anything else (or an id that is
/// empty or longer than [`MAX_ID_LEN`]) makes the push malformed.
fn ids<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let raw = Vec::<Value>::deserialize(d)?;
    raw.into_iter()
        .map(|v| {
            let id = match v {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                _ => return Err(serde::de::Error::custom("ids are strings or numbers")),
            };
            if id.is_empty() || id.len() > MAX_ID_LEN {
                return Err(serde::de::Error::custom("an id is empty or too long"));
            }
            Ok(id)
        })
        .collect()
}

impl Recipients {
    /// How many participants it names.
    pub(crate) fn len(&self) -> usize {
        self.user_ids.len() + self.profile_ids.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of one kind.
    pub(crate) fn ids(&self, kind: Kind) -> &[String] {
        match kind {
            Kind::User => &self.user_ids,
            Kind::Profile => &self.profile_ids,
        }
    }

    /// Every participant named.
    pub(crate) fn participants(&self) -> impl Iterator<Item = Participant> + '_ {
        [Kind::User, Kind::Profile]
            .into_iter()
            .flat_map(move |kind| {
                self.ids(kind)
                    .iter()
                    .filter_map(move |id| Participant::new(kind, id))
            })
    }

    /// The identity rooms of the participants of `kind` (in `kind`'s namespace).
    pub(crate) fn rooms(&self, kind: Kind) -> Vec<String> {
        self.ids(kind)
            .iter()
            .filter_map(|id| Participant::new(kind, id))
            .map(|p| p.identity_room())
            .collect()
    }

    /// Whether `who` is named.
    pub(crate) fn contains(&self, who: &Participant) -> bool {
        self.ids(who.kind).iter().any(|id| **id == *who.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_may_be_numbers_and_must_be_bounded() {
        let r: Recipients =
            serde_json::from_str(r#"{"user_ids": ["42", 7], "profile_ids": ["p-1"]}"#).unwrap();
        assert_eq!(r.user_ids, ["42", "7"]);
        assert_eq!(r.rooms(Kind::User), ["user:42", "user:7"]);
        assert_eq!(r.rooms(Kind::Profile), ["profile:p-1"]);
        assert!(r.contains(&Participant::new(Kind::User, "7").unwrap()));
        assert!(!r.contains(&Participant::new(Kind::Profile, "7").unwrap()));
        assert_eq!(r.len(), 3);
        assert!(serde_json::from_str::<Recipients>(r#"{"user_ids": [null]}"#).is_err());
        assert!(serde_json::from_str::<Recipients>(r#"{"user_ids": [""]}"#).is_err());
        let long = format!(r#"{{"user_ids": ["{}"]}}"#, "x".repeat(MAX_ID_LEN + 1));
        assert!(serde_json::from_str::<Recipients>(&long).is_err());
        assert!(serde_json::from_str::<Recipients>("{}").unwrap().is_empty());
    }
}
