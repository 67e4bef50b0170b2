//! Loaded integrations kept in memory for `execution.cache_ttl_ms`, so a burst of executions
//! does not each read PostgreSQL and decrypt the secrets. Absent integrations are cached too
//! (the gateway's join checks ask for them). Bounded: past `cache_max_entries` expired entries
//! are dropped, and if it is still full the loaded value is used without being kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::spec::Target;
use super::{LoadError, Loader};

/// When an entry was loaded, and what (`None`: no such integration).
type Entry = (Instant, Option<Arc<Target>>);

/// The cache.
#[derive(Clone)]
pub struct TargetCache {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    ttl: Duration,
    max: usize,
    loader: Loader,
}

impl std::fmt::Debug for TargetCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetCache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TargetCache {
    /// A cache over `loader`.
    pub fn new(loader: Loader, ttl: Duration, max: usize) -> Self {
        Self {
            entries: Arc::default(),
            ttl,
            max,
            loader,
        }
    }

    /// Integration `id`, from memory when loaded less than the TTL ago.
    pub async fn get(&self, id: &str) -> Result<Option<Arc<Target>>, LoadError> {
        let now = Instant::now();
        if let Ok(entries) = self.entries.lock()
            && let Some((at, target)) = entries.get(id)
            && now.duration_since(*at) < self.ttl
        {
            return Ok(target.clone());
        }
        let loaded = (self.loader)(id.to_owned()).await?.map(Arc::new);
        if self.ttl > Duration::ZERO
            && let Ok(mut entries) = self.entries.lock()
        {
            if entries.len() >= self.max && !entries.contains_key(id) {
                let ttl = self.ttl;
                entries.retain(|_, (at, _)| now.duration_since(*at) < ttl);
            }
            if entries.len() < self.max || entries.contains_key(id) {
                entries.insert(id.to_owned(), (now, loaded.clone()));
            }
        }
        Ok(loaded)
    }

    /// Forgets `id` (after a change through the REST API on this replica).
    pub fn invalidate(&self, id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(id);
        }
    }
}
