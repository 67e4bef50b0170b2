//! The Socket.IO namespaces: the four of seed 000 and the default one, `/` (seed 002).

/// A namespace this gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    /// `/admin`: CRM panel, JWT.
    Admin,
    /// `/provider`: Provider App, Logto access token.
    Provider,
    /// `/widget`: embeddable widgets, widget key.
    Widget,
    /// `/stat`: public counters, no credentials.
    Stat,
    /// `/`: the default namespace, integrations (seed 002), the `/admin` JWT.
    Root,
}

impl Namespace {
    /// Every namespace, in the order of [`Namespace::index`].
    pub const ALL: [Self; 5] = [
        Self::Admin,
        Self::Provider,
        Self::Widget,
        Self::Stat,
        Self::Root,
    ];

    /// Its name without the slash (`admin`), as metrics label it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Provider => "provider",
            Self::Widget => "widget",
            Self::Stat => "stat",
            Self::Root => "root",
        }
    }

    /// Its path (`/admin`), as clients connect to it.
    pub const fn path(self) -> &'static str {
        match self {
            Self::Admin => "/admin",
            Self::Provider => "/provider",
            Self::Widget => "/widget",
            Self::Stat => "/stat",
            Self::Root => "/",
        }
    }

    /// Position in [`Namespace::ALL`], for per-namespace arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_follow_all() {
        for (i, ns) in Namespace::ALL.into_iter().enumerate() {
            assert_eq!(ns.index(), i);
            if ns == Namespace::Root {
                assert_eq!(ns.path(), "/");
            } else {
                assert_eq!(ns.path(), format!("/{}", ns.name()));
            }
        }
    }
}
