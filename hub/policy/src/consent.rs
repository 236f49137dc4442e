//! Consents given at run time: an owner of personal data lets a subject or role read, write or act on the owner's
//! objects, until an expiry. The HTTP API keeps them (with their purpose, who granted them, on whose delegation)
//! and hands the engine what a decision needs: [`Grant`]s, applied to the very next check by
//! [`PolicyEngine::set_grants`](crate::PolicyEngine::set_grants).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{Action, glob::object_matches};

/// What one consent allows, as the engine applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The consent's id, named by explanations.
    pub id: String,
    /// Whose personal data (canonical name, as [`PolicyEngine::canonical`](crate::PolicyEngine::canonical)
    /// spells it). The grant applies only to objects this subject owns.
    pub owner: String,
    /// Who may use it: a subject, or a role whose holders may (canonical name).
    pub grantee: String,
    /// The object pattern (as in `p` lines) the grant covers, within the owner's objects.
    pub objects: String,
    /// What the grantee may do: `read`, `write`, `act` (never `admin`).
    pub actions: Vec<Action>,
    /// When it stops applying, in µs since the Unix epoch (`None`: until revoked).
    pub expires: Option<i64>,
}

impl Grant {
    /// Whether the grant, at `now` (µs since the epoch), covers `action` on `object` (whose owner the caller has
    /// already matched).
    pub fn covers(&self, action: Action, object: &str, now: i64) -> bool {
        self.actions.contains(&action)
            && self.expires.is_none_or(|expires| now < expires)
            && object_matches(&self.objects, object)
    }
}

/// The grants in force, by owner.
#[derive(Debug, Default)]
pub(crate) struct GrantIndex {
    by_owner: HashMap<String, Vec<Arc<Grant>>>,
    /// Whether any grant names `write` / `act`: without one, a denied write or act never looks at labels.
    writes: bool,
    acts: bool,
}

impl GrantIndex {
    pub(crate) fn new(grants: impl IntoIterator<Item = Grant>) -> Self {
        let mut index = GrantIndex::default();
        for grant in grants {
            index.writes |= grant.actions.contains(&Action::Write);
            index.acts |= grant.actions.contains(&Action::Act);
            index.by_owner.entry(grant.owner.clone()).or_default().push(Arc::new(grant));
        }
        index
    }

    /// Whether some grant names `action`.
    pub(crate) fn names(&self, action: Action) -> bool {
        match action {
            Action::Read => !self.by_owner.is_empty(),
            Action::Write => self.writes,
            Action::Act => self.acts,
            Action::Admin => false,
        }
    }

    /// The owner's grants covering `action` on `object` now, in the order they were given.
    pub(crate) fn covering<'a>(
        &'a self,
        owner: &str,
        action: Action,
        object: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Grant>> + 'a {
        let now = now_micros();
        self.by_owner.get(owner).into_iter().flatten().filter(move |grant| grant.covers(action, object, now))
    }

    pub(crate) fn len(&self) -> usize {
        self.by_owner.values().map(Vec::len).sum()
    }
}

/// Now, in µs since the Unix epoch.
pub(crate) fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(objects: &str, actions: &[Action], expires: Option<i64>) -> Grant {
        Grant {
            id: "g1".into(),
            owner: "erin".into(),
            grantee: "nurse".into(),
            objects: objects.into(),
            actions: actions.to_vec(),
            expires,
        }
    }

    #[test]
    fn a_grant_covers_its_actions_objects_and_time() {
        let g = grant("care-7/*", &[Action::Read], Some(1_000));
        assert!(g.covers(Action::Read, "care-7/vitals/pulse", 999));
        assert!(!g.covers(Action::Read, "care-7/vitals/pulse", 1_000), "expired at its expiry");
        assert!(!g.covers(Action::Write, "care-7/vitals/pulse", 0), "an action it does not name");
        assert!(!g.covers(Action::Read, "care-8/vitals/pulse", 0), "an object outside its pattern");
        assert!(grant("care-7/*", &[Action::Read], None).covers(Action::Read, "care-7/a/b", i64::MAX - 1));
    }

    #[test]
    fn the_index_says_which_actions_any_grant_names() {
        let index = GrantIndex::new([grant("care-7/*", &[Action::Read, Action::Act], None)]);
        assert!(index.names(Action::Read) && index.names(Action::Act));
        assert!(!index.names(Action::Write) && !index.names(Action::Admin));
        assert_eq!(index.covering("erin", Action::Act, "care-7/alarm/siren").count(), 1);
        assert_eq!(index.covering("frank", Action::Act, "care-7/alarm/siren").count(), 0);
        assert!(!GrantIndex::default().names(Action::Read));
    }
}
