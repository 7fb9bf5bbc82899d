//! What the DNS resolver shares with the rest of the daemon: the domain
//! rules of each live policy instance (written by the enforcer as it opens
//! and discards instances), and the interned names the kernel's learned
//! entries point to (read by the pipeline for the `domain` of connect
//! records).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use crate::policy::domain::DomainTable;

/// The domain rules one policy instance judges names by.
pub struct InstanceDomains {
    pub policy: Arc<str>,
    pub table: Arc<DomainTable>,
    /// `enforce` mode: a denied name is refused; in `audit` mode it is
    /// resolved and recorded as a policy hit.
    pub enforce: bool,
}

#[derive(Default)]
struct Inner {
    instances: HashMap<u32, Arc<InstanceDomains>>,
    /// Index `id - 1` holds name `id`; 0 is no name.
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32>,
}

/// Shared between the enforcer (instances), the resolver (judging and
/// interning) and the pipeline (naming `domain`). Cloning shares it.
#[derive(Clone, Default)]
pub struct Domains(Arc<RwLock<Inner>>);

impl Domains {
    pub fn bind(&self, instance: u32, domains: InstanceDomains) {
        self.0.write().expect("not poisoned").instances.insert(instance, Arc::new(domains));
    }

    pub fn unbind(&self, instance: u32) {
        self.0.write().expect("not poisoned").instances.remove(&instance);
    }

    pub fn instance(&self, instance: u32) -> Option<Arc<InstanceDomains>> {
        self.0.read().expect("not poisoned").instances.get(&instance).cloned()
    }

    pub fn is_live(&self, instance: u32) -> bool {
        self.0.read().expect("not poisoned").instances.contains_key(&instance)
    }

    /// The id of `name`, allocated on first use. Names are kept for the
    /// daemon's lifetime: a learned entry or a queued record may name one
    /// long after its answer.
    pub fn intern(&self, name: &str) -> u32 {
        if let Some(&id) = self.0.read().expect("not poisoned").ids.get(name) {
            return id;
        }
        let mut inner = self.0.write().expect("not poisoned");
        if let Some(&id) = inner.ids.get(name) {
            return id;
        }
        let name: Arc<str> = name.into();
        inner.names.push(name.clone());
        let id = inner.names.len() as u32;
        inner.ids.insert(name, id);
        id
    }

    pub fn name(&self, id: u32) -> Option<Arc<str>> {
        let inner = self.0.read().expect("not poisoned");
        id.checked_sub(1).and_then(|i| inner.names.get(i as usize).cloned())
    }
}
