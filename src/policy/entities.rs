//! From domain types to Cedar entities, and from entity uids given as text back.
//!
//! Per request the engine builds only what the request can touch: the principal with its role,
//! the action with its groups, and the resource with its enclosing scopes (`a/b/c` in `a/b`
//! in `a`); a scope under `devices/<id>` carries `owner` = that device. They are built as
//! cedar-policy-core entities with the closure already computed, which the public
//! `Entities::from_entities` would recompute at several times the cost of the decision.
//! No IO, no clock.

use std::collections::HashSet;

use cedar_policy::{Entities, EntityId, EntityTypeName, EntityUid};
use cedar_policy_core::ast::{self, PartialValue, Value};
use cedar_policy_core::entities as core_entities;
use cedar_policy_core::extensions::Extensions;

use super::{PolicyError, quote};
use crate::auth::ProfileName;
use crate::identity::{Device, DeviceId, DeviceStatus, Principal, Role};
use crate::vault::Scope;

/// The id of the one Node entity, `Palyra::Node::"local"`.
pub(crate) const NODE_ID: &str = "local";
/// The id of the one Anonymous entity, `Palyra::Anonymous::"anonymous"`.
pub(crate) const ANONYMOUS_ID: &str = "anonymous";
/// Longest entity uid text [`parse_entity_ref`] looks at.
const MAX_UID_TEXT: usize = 1024;

/// What a request is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    /// This node: the method gate of every call.
    Node,
    /// A vault scope: the resource check of vault calls.
    Scope(Scope),
    /// A device: the resource check of GetDevice and RenewCertificate.
    Device(DeviceId),
    /// An auth profile: the resource check of AuthProfileService.GetAccessToken.
    Profile(ProfileName),
}

/// The principal as the engine sees it: a [`Principal`] plus what policies may read about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    /// No client certificate.
    Anonymous,
    /// A registered device.
    Device {
        /// Its id.
        id: DeviceId,
        /// Its role.
        role: Role,
        /// Its name ("" when the caller does not know it).
        name: &'a str,
        /// Its fingerprint.
        fingerprint: &'a str,
        /// Active or revoked.
        status: DeviceStatus,
        /// Vault scopes granted beyond its own subtree.
        granted: &'a [Scope],
    },
}

impl<'a> Subject<'a> {
    /// A resolved principal: active (only active devices get a `Principal`), name unknown.
    pub fn principal(principal: &'a Principal, granted: &'a [Scope]) -> Self {
        match principal {
            Principal::Anonymous => Subject::Anonymous,
            Principal::Device { id, role, fingerprint } => Subject::Device {
                id: *id,
                role: *role,
                name: "",
                fingerprint,
                status: DeviceStatus::Active,
                granted,
            },
        }
    }

    /// A device as the registry keeps it (revoked ones included, for what-if questions).
    pub fn device(device: &'a Device) -> Self {
        Subject::Device {
            id: device.id,
            role: device.role,
            name: &device.name,
            fingerprint: &device.fingerprint,
            status: device.status,
            granted: &device.scopes,
        }
    }
}

/// An entity uid read from text by [`parse_entity_ref`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntityRef {
    /// `Palyra::Device::"<ulid>"` (either case).
    Device(DeviceId),
    /// `Palyra::Anonymous::"anonymous"`.
    Anonymous,
    /// `Palyra::Node::"local"`.
    Node,
    /// `Palyra::Scope::"<scope>"`.
    Scope(Scope),
    /// `Palyra::Profile::"<name>"`.
    Profile(ProfileName),
}

/// Reads an entity uid given as text, as PolicyService.Authorize receives them:
/// `Palyra::Device::"01J…"`, `Palyra::Anonymous::"anonymous"`, `Palyra::Node::"local"`,
/// `Palyra::Scope::"a/b"`. Anything else is an error that says what is accepted.
pub fn parse_entity_ref(text: &str) -> Result<EntityRef, PolicyError> {
    parse_entity_ref_like(text, "Palyra::Scope::\"a/b\"")
}

/// [`parse_entity_ref`] for a principal: a uid that does not parse is answered with a
/// principal's example (`Palyra::Device::"<id>"`), not a scope's.
pub fn parse_principal_ref(text: &str) -> Result<EntityRef, PolicyError> {
    parse_entity_ref_like(text, "Palyra::Device::\"01j9zq8x7c6v5b4n3m2k1j0h9a\" or Palyra::Anonymous::\"anonymous\"")
}

fn parse_entity_ref_like(text: &str, example: &str) -> Result<EntityRef, PolicyError> {
    let uid = parse_uid(text, example)?;
    let err = |reason: String| PolicyError::InvalidEntityRef { input: quote(text), reason };
    let id = uid.id().unescaped();
    match uid.type_name().to_string().as_str() {
        "Palyra::Device" => DeviceId::parse(id).map(EntityRef::Device).map_err(|e| err(e.to_string())),
        "Palyra::Anonymous" if id == ANONYMOUS_ID => Ok(EntityRef::Anonymous),
        "Palyra::Anonymous" => {
            Err(err(format!("the anonymous principal is Palyra::Anonymous::\"{ANONYMOUS_ID}\"")))
        }
        "Palyra::Node" if id == NODE_ID => Ok(EntityRef::Node),
        "Palyra::Node" => Err(err(format!("this node is Palyra::Node::\"{NODE_ID}\""))),
        "Palyra::Scope" => Scope::parse(id).map(EntityRef::Scope).map_err(|e| err(e.to_string())),
        "Palyra::Profile" => ProfileName::parse(id).map(EntityRef::Profile).map_err(|e| err(e.to_string())),
        other => Err(err(format!(
            "unknown entity type {}: use Palyra::Device, Palyra::Anonymous, Palyra::Node, Palyra::Scope or Palyra::Profile",
            quote(other)
        ))),
    }
}

/// Reads an action uid given as text (`Palyra::Action::"palyra.vault.v1.VaultService/GetSecret"`)
/// and returns its id when it is one of [`super::actions::ALL`].
pub fn parse_action_ref(text: &str) -> Result<&'static str, PolicyError> {
    let uid = parse_uid(text, "Palyra::Action::\"palyra.vault.v1.VaultService/GetSecret\"")?;
    let err = |reason: String| PolicyError::InvalidEntityRef { input: quote(text), reason };
    if uid.type_name().to_string() != "Palyra::Action" {
        return Err(err("an action is a Palyra::Action uid".to_owned()));
    }
    let id = uid.id().unescaped();
    super::actions::ALL
        .iter()
        .find(|a| **a == id)
        .copied()
        .ok_or_else(|| err("unknown action: not a gRPC method or QUIC method of this node".to_owned()))
}

fn parse_uid(text: &str, example: &str) -> Result<EntityUid, PolicyError> {
    let err = |reason: String| PolicyError::InvalidEntityRef { input: quote(text), reason };
    if text.len() > MAX_UID_TEXT {
        return Err(err(format!("longer than {MAX_UID_TEXT} bytes")));
    }
    text.trim().parse::<EntityUid>().map_err(|e| {
        err(format!(
            "expected a Cedar entity uid such as {example} ({})",
            one_line(&e.to_string())
        ))
    })
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// How the principal appears in `updated_by` and Cedar text: `Palyra::Device::"<id>"` or
/// `Palyra::Anonymous::"anonymous"`.
pub fn principal_uid(principal: &Principal) -> String {
    match principal {
        Principal::Anonymous => format!("Palyra::Anonymous::\"{ANONYMOUS_ID}\""),
        Principal::Device { id, .. } => format!("Palyra::Device::\"{id}\""),
    }
}

/// The principal kinds policies are sliced by: a principal's type and, for a device, its role.
pub(crate) const PRINCIPAL_KINDS: usize = 4;
/// The resource kinds policies are sliced by: Node, Scope, Device, Profile.
pub(crate) const RESOURCE_KINDS: usize = 4;

impl Subject<'_> {
    /// 0 Anonymous, then one per role.
    pub(crate) fn kind(&self) -> usize {
        match self {
            Subject::Anonymous => 0,
            Subject::Device { role: Role::Admin, .. } => 1,
            Subject::Device { role: Role::Device, .. } => 2,
            Subject::Device { role: Role::Node, .. } => 3,
        }
    }
}

impl Resource {
    /// 0 Node, 1 Scope, 2 Device, 3 Profile.
    pub(crate) fn kind(&self) -> usize {
        match self {
            Resource::Node => 0,
            Resource::Scope(_) => 1,
            Resource::Device(_) => 2,
            Resource::Profile(_) => 3,
        }
    }
}

/// The entity type names, parsed once per engine.
#[derive(Debug, Clone)]
pub(crate) struct Types {
    role: EntityTypeName,
    device: EntityTypeName,
    anonymous: EntityTypeName,
    node: EntityTypeName,
    scope: EntityTypeName,
    profile: EntityTypeName,
}

impl Types {
    pub(crate) fn new() -> Result<Self, PolicyError> {
        let parse = |name: &str| {
            name.parse::<EntityTypeName>()
                .map_err(|e| PolicyError::Schema(format!("entity type {name}: {e}")))
        };
        Ok(Types {
            role: parse("Palyra::Role")?,
            device: parse("Palyra::Device")?,
            anonymous: parse("Palyra::Anonymous")?,
            node: parse("Palyra::Node")?,
            scope: parse("Palyra::Scope")?,
            profile: parse("Palyra::Profile")?,
        })
    }

    fn uid(&self, ty: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
    }

    /// The type names of a principal kind (see [`Subject::kind`]) and a resource kind.
    pub(crate) fn principal_type(&self, kind: usize) -> &EntityTypeName {
        if kind == 0 { &self.anonymous } else { &self.device }
    }

    pub(crate) fn resource_type(&self, kind: usize) -> &EntityTypeName {
        match kind {
            0 => &self.node,
            1 => &self.scope,
            2 => &self.device,
            _ => &self.profile,
        }
    }

    pub(crate) fn role_type(&self) -> &EntityTypeName {
        &self.role
    }

    pub(crate) fn device_uid(&self, id: DeviceId) -> EntityUid {
        self.uid(&self.device, &id.to_string())
    }

    fn scope_uid(&self, scope: &str) -> ast::EntityUID {
        self.uid(&self.scope, scope).into()
    }

    pub(crate) fn subject_uid(&self, subject: &Subject<'_>) -> EntityUid {
        match subject {
            Subject::Anonymous => self.uid(&self.anonymous, ANONYMOUS_ID),
            Subject::Device { id, .. } => self.device_uid(*id),
        }
    }

    pub(crate) fn resource_uid(&self, resource: &Resource) -> EntityUid {
        match resource {
            Resource::Node => self.uid(&self.node, NODE_ID),
            Resource::Scope(scope) => self.uid(&self.scope, scope.as_str()),
            Resource::Device(id) => self.device_uid(*id),
            Resource::Profile(name) => self.uid(&self.profile, name.as_str()),
        }
    }

    /// The entities of one request: the principal (a device with its attributes and its role
    /// as parent), the action (with its groups), and the resource (a scope with every
    /// enclosing scope as a parent and, under `devices/<id>`, its owner; the Node). A device
    /// resource is known only when it is the principal, which is already there.
    ///
    /// Invariant: every entity lists its complete set of ancestors (roles, Node and the
    /// Anonymous entity have none; a scope's ancestors are exactly its enclosing scopes;
    /// action ancestors come closed from the schema), so the hierarchy is transitively closed
    /// as built and Cedar's closure computation, most of the cost of a decision, is skipped.
    /// Entities only named as ancestors or in `granted` are left out: nothing but an entity
    /// literal could read their attributes.
    pub(crate) fn request_entities(
        &self,
        subject: &Subject<'_>,
        principal: &EntityUid,
        action: &ast::Entity,
        resource: &Resource,
        resource_uid: &EntityUid,
    ) -> Result<Entities, String> {
        let mut out = Vec::with_capacity(3);
        let principal_uid: ast::EntityUID = principal.clone().into();
        match subject {
            Subject::Anonymous => out.push(ast::Entity::with_uid(principal_uid)),
            Subject::Device { role, name, fingerprint, status, granted, .. } => {
                let role_uid: ast::EntityUID = self.uid(&self.role, role.as_str()).into();
                let status = match status {
                    DeviceStatus::Active => "active",
                    DeviceStatus::Revoked => "revoked",
                };
                let granted =
                    Value::set(granted.iter().map(|s| Value::from(self.scope_uid(s.as_str()))), None);
                let attrs = [
                    ("name".into(), PartialValue::from(*name)),
                    ("status".into(), PartialValue::from(status)),
                    ("fingerprint".into(), PartialValue::from(*fingerprint)),
                    ("granted".into(), PartialValue::from(granted)),
                ];
                out.push(ast::Entity::new_with_attr_partial_value(
                    principal_uid,
                    attrs,
                    HashSet::new(),
                    HashSet::from([role_uid]),
                    [],
                ));
            }
        }
        out.push(action.clone());
        match resource {
            Resource::Node | Resource::Profile(_) => {
                out.push(ast::Entity::with_uid(resource_uid.clone().into()))
            }
            Resource::Scope(scope) => out.push(self.scope_entity(scope, resource_uid)),
            Resource::Device(_) => {}
        }
        let entities = core_entities::Entities::from_entities(
            out,
            None::<&core_entities::NoEntitiesSchema>,
            core_entities::TCComputation::AssumeAlreadyComputed,
            Extensions::all_available(),
        )
        .map_err(|e| e.to_string())?;
        Ok(Entities::from(entities))
    }

    fn scope_entity(&self, scope: &Scope, uid: &EntityUid) -> ast::Entity {
        let text = scope.as_str();
        let ancestors: HashSet<ast::EntityUID> =
            text.match_indices('/').map(|(at, _)| self.scope_uid(&text[..at])).collect();
        // `devices/<id>` and below are owned; `devices` itself is not.
        let owner = owner_of(text).map(|id| {
            let owner: ast::EntityUID = self.device_uid(id).into();
            ("owner".into(), PartialValue::from(owner))
        });
        ast::Entity::new_with_attr_partial_value(uid.clone().into(), owner, HashSet::new(), ancestors, [])
    }
}

/// The device that owns a scope: the id in `devices/<id>/…`, when it is a device id in its
/// canonical spelling (scopes are lower case; an overflowing `8…`–`z…` segment names no one).
fn owner_of(scope: &str) -> Option<DeviceId> {
    let rest = scope.strip_prefix("devices/")?;
    let segment = rest.split('/').next()?;
    DeviceId::parse_canonical(segment).ok()
}

impl std::fmt::Display for Resource {
    /// How audit records and logs name a resource: `Node`, `Scope:<scope>`, `Device:<id>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Node => f.write_str("Node"),
            Resource::Scope(scope) => write!(f, "Scope:{scope}"),
            Resource::Device(id) => write!(f, "Device:{id}"),
            Resource::Profile(name) => write!(f, "Profile:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_refs_parse() -> Result<(), PolicyError> {
        let id = DeviceId::generate();
        let upper = id.to_string().to_uppercase();
        assert_eq!(parse_entity_ref(&format!("Palyra::Device::\"{upper}\""))?, EntityRef::Device(id));
        assert_eq!(parse_entity_ref(&format!("Palyra::Device::\"{id}\""))?, EntityRef::Device(id));
        // Either case reads as the one canonical id; what reaches Cedar is its lower-case uid.
        let EntityRef::Device(read) = parse_entity_ref(&format!("Palyra::Device::\"{upper}\""))? else {
            return Err(PolicyError::Schema("a device".into()));
        };
        assert_eq!(read.to_string(), id.to_string());
        assert_eq!(parse_entity_ref("Palyra::Anonymous::\"anonymous\"")?, EntityRef::Anonymous);
        assert_eq!(parse_entity_ref(" Palyra::Node::\"local\" ")?, EntityRef::Node);
        assert_eq!(
            parse_entity_ref("Palyra::Scope::\"agents/alpha\"")?,
            EntityRef::Scope(Scope::parse("agents/alpha").map_err(|e| PolicyError::Schema(e.to_string()))?)
        );
        Ok(())
    }

    #[test]
    fn entity_refs_refuse_with_a_reason() {
        let cases = [
            ("Palyra::Device::\"nope\"", "device id"),
            ("Palyra::Device::\"81j9zq8x7c6v5b4n3m2k1j0h9a\"", "overflows 128 bits"),
            ("Palyra::Device::\"Z1J9ZQ8X7C6V5B4N3M2K1J0H9A\"", "overflows 128 bits"),
            ("Palyra::Anonymous::\"bob\"", "Palyra::Anonymous::\"anonymous\""),
            ("Palyra::Node::\"other\"", "Palyra::Node::\"local\""),
            ("Palyra::Scope::\"A/B\"", "invalid scope"),
            ("Palyra::Role::\"admin\"", "unknown entity type"),
            ("User::\"alice\"", "unknown entity type"),
            ("Palyra::Device::", "entity uid"),
            ("", "entity uid"),
            ("not a uid at all", "entity uid"),
        ];
        for (input, want) in cases {
            let err = parse_entity_ref(input).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(want), "{input:?}: {err}");
            assert!(err.starts_with("invalid entity uid"), "{err}");
        }
        let principal = parse_principal_ref("01j9zq8x7c6v5b4n3m2k1j0h9a").err().map(|e| e.to_string());
        let principal = principal.unwrap_or_default();
        assert!(principal.contains("such as Palyra::Device::") && !principal.contains("Scope"), "{principal}");
        let long = format!("Palyra::Scope::\"{}\"", "a".repeat(5000));
        let err = parse_entity_ref(&long).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("longer than") && err.len() < 300, "{err}");
    }

    #[test]
    fn action_refs_parse() {
        assert_eq!(
            parse_action_ref("Palyra::Action::\"palyra.vault.v1.VaultService/GetSecret\"").ok(),
            Some(super::super::actions::GET_SECRET)
        );
        assert!(parse_action_ref("Palyra::Action::\"nope\"").is_err());
        assert!(parse_action_ref("Palyra::Node::\"node.health\"").is_err());
    }

    #[test]
    fn owners_are_device_ids_under_devices() {
        let id = DeviceId::generate();
        assert_eq!(owner_of(&format!("devices/{id}")), Some(id));
        assert_eq!(owner_of(&format!("devices/{id}/a/b")), Some(id));
        assert_eq!(owner_of("devices"), None);
        assert_eq!(owner_of("devices/not-a-ulid"), None);
        assert_eq!(owner_of(&format!("agents/{id}")), None);
        // The spelling that overflows 128 bits to the same id owns nothing (it used to make
        // `id` the owner of a second subtree, `devices/8…`).
        let text = id.to_string();
        let first = char::from(text.as_bytes()[0] + 8);
        let alias = format!("devices/{first}{}", &text[1..]);
        assert!(Scope::parse(&alias).is_ok(), "a valid scope");
        assert_eq!(owner_of(&alias), None);
    }

    #[test]
    fn request_entities_are_closed_and_match_what_cedar_would_compute() -> Result<(), String> {
        let types = Types::new().map_err(|e| e.to_string())?;
        let id = DeviceId::generate();
        let granted = [Scope::parse("agents/alpha").map_err(|e| e.to_string())?];
        let principal = Principal::Device { id, role: Role::Device, fingerprint: "ab".into() };
        let subject = Subject::principal(&principal, &granted);
        let scope = Scope::parse(&format!("devices/{id}/apps/mail")).map_err(|e| e.to_string())?;
        let resource = Resource::Scope(scope);
        let (schema, _) = cedar_policy::Schema::from_cedarschema_str(super::super::SCHEMA_TEXT)
            .map_err(|e| e.to_string())?;
        let actions = schema.action_entities().map_err(|e| e.to_string())?;
        let get: EntityUid = "Palyra::Action::\"palyra.vault.v1.VaultService/GetSecret\""
            .parse()
            .map_err(|e| format!("{e}"))?;
        let action = actions.get(&get).ok_or("action")?;
        let p = types.subject_uid(&subject);
        let r = types.resource_uid(&resource);
        let built = types.request_entities(&subject, &p, action.as_ref(), &resource, &r)?;

        // What the public API, closure computed, says about the same hierarchy.
        let uid = |text: &str| text.parse::<EntityUid>().map_err(|e| format!("{e}"));
        let checks = [
            (r.clone(), uid(&format!("Palyra::Scope::\"devices/{id}/apps\""))?, true),
            (r.clone(), uid(&format!("Palyra::Scope::\"devices/{id}\""))?, true),
            (r.clone(), uid("Palyra::Scope::\"devices\"")?, true),
            (r.clone(), uid("Palyra::Scope::\"agents\"")?, false),
            (r.clone(), uid(&format!("Palyra::Scope::\"devices/{id}/apps/mail/x\""))?, false),
            (p.clone(), uid("Palyra::Role::\"device\"")?, true),
            (p.clone(), uid("Palyra::Role::\"admin\"")?, false),
            (get.clone(), uid("Palyra::Action::\"vault.read\"")?, true),
            (get.clone(), uid("Palyra::Action::\"vault\"")?, true),
            (get.clone(), uid("Palyra::Action::\"vault.write\"")?, false),
        ];
        for (child, ancestor, want) in checks {
            assert_eq!(built.is_ancestor_of(&ancestor, &child), want, "{child} in {ancestor}");
        }
        let resource_entity = built.get(&r).ok_or("resource entity")?;
        assert!(resource_entity.attr("owner").is_some());
        let principal_entity = built.get(&p).ok_or("principal entity")?;
        assert!(principal_entity.attr("granted").is_some());
        let unowned = Resource::Scope(Scope::parse("devices").map_err(|e| e.to_string())?);
        let ur = types.resource_uid(&unowned);
        let built = types.request_entities(&subject, &p, action.as_ref(), &unowned, &ur)?;
        assert!(built.get(&ur).ok_or("scope")?.attr("owner").is_none());
        Ok(())
    }
}
