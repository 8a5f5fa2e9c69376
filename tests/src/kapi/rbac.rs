//! Who may do what, decided as the API server decides it: a request's attributes read from
//! its method and path as the apiserver's RequestInfo does, then judged against roles and
//! bindings as the RBAC authorizer judges them, and a denial worded as the server words it.
//! Pure functions over k8s-openapi's `rbac/v1` types, so the rules are tested without a
//! server.
//!
//! Not modelled: aggregated ClusterRoles (give their rules as the aggregation controller
//! would have filled them), the Node and webhook authorizers, impersonation.

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// An authenticated (or anonymous) user, as an authenticator hands it to the authorizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    /// A service account's user, with the groups the token authenticator gives it.
    pub fn service_account(namespace: &str, name: &str) -> User {
        User {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }

    /// A request that carried no credentials, where anonymous requests are allowed.
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }
}

/// What a request asks to do: the authorizer's attributes. Strings are empty where the
/// request has no such part (a cluster-scoped request has no namespace), as in the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// Under /api or /apis with a version and a resource; otherwise a non-resource request
    /// (/healthz, /version, discovery), judged by `nonResourceURLs`.
    pub resource_request: bool,
    pub verb: String,
    pub path: String,
    pub api_group: String,
    pub api_version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

impl Attributes {
    /// The request's attributes as the apiserver's RequestInfoFactory reads them: the verb
    /// from the method (GET of a collection is list, or watch with `watch=true|1`; DELETE
    /// of a collection is deletecollection; `/watch/` and `/proxy/` path verbs), group and
    /// version from `/api/v1` or `/apis/<group>/<version>`, then namespace, resource, name
    /// and subresource. A list or watch narrowed to one name by a `metadata.name`
    /// fieldSelector carries that name, so `resourceNames` rules can allow it. `Err` for the
    /// paths the server itself cannot read (`/api/v1/watch` with nothing after it).
    pub fn from_request(method: &str, path: &str, query: &str) -> Result<Attributes, String> {
        let mut a = Attributes {
            verb: method.to_ascii_lowercase(),
            path: path.to_string(),
            ..Default::default()
        };
        let parts: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|p| !p.is_empty())
            .collect();
        // `/api/<version>/<resource>...` or `/apis/<group>/<version>/<resource>...`; anything
        // shorter or elsewhere is not a resource.
        let mut rest: &[&str] = &parts;
        match rest.first() {
            Some(&"api") if rest.len() >= 3 => rest = &rest[1..],
            Some(&"apis") if rest.len() >= 4 => {
                a.api_group = rest[1].to_string();
                rest = &rest[2..];
            }
            _ => return Ok(a),
        }
        a.resource_request = true;
        a.api_version = rest[0].to_string();
        rest = &rest[1..];
        if matches!(rest.first(), Some(&("watch" | "proxy"))) {
            if rest.len() < 2 {
                return Err(format!(
                    "unable to determine kind and namespace from url {path}"
                ));
            }
            a.verb = rest[0].to_string();
            rest = &rest[1..];
        } else {
            a.verb = match method {
                "POST" => "create",
                "GET" | "HEAD" => "get",
                "PUT" => "update",
                "PATCH" => "patch",
                "DELETE" => "delete",
                _ => "",
            }
            .to_string();
        }
        if rest.first() == Some(&"namespaces") {
            if let Some(ns) = rest.get(1) {
                a.namespace = ns.to_string();
                // `namespaces/x/status` and `/finalize` are the namespace's own
                // subresources; anything else after the name is a resource in it.
                if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
                    rest = &rest[2..];
                }
            }
        }
        if rest.len() >= 3 && a.verb != "proxy" {
            a.subresource = rest[2].to_string();
        }
        if rest.len() >= 2 {
            a.name = rest[1].to_string();
        }
        if let Some(r) = rest.first() {
            a.resource = r.to_string();
        }
        if a.name.is_empty() && a.verb == "get" {
            let param = |key: &str| {
                form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.into_owned())
            };
            // The stand-in watches for exactly these values; judging any other the same way
            // keeps the decision and what is served in step.
            a.verb = if matches!(param("watch").as_deref(), Some("true" | "1")) {
                "watch"
            } else {
                "list"
            }
            .to_string();
            if let Some(name) = param("fieldSelector").and_then(|f| exact_name(&f)) {
                a.name = name;
            }
        }
        if a.name.is_empty() && a.verb == "delete" {
            a.verb = "deletecollection".into();
        }
        Ok(a)
    }
}

/// The name a field selector pins (`metadata.name=x` or `==` in any of its terms), when it
/// is a valid path segment name, as `RequiresExactMatch` finds it.
fn exact_name(selector: &str) -> Option<String> {
    selector.split(',').find_map(|term| {
        let (key, value) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .filter(|(k, _)| !k.ends_with('!'))?;
        let value = value.trim();
        let valid = !matches!(value, "." | "..") && !value.contains(['/', '%']);
        (key.trim() == "metadata.name" && valid).then(|| value.to_string())
    })
}

/// The roles and bindings a cluster holds.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
}

impl Policy {
    /// Adds the bootstrap roles every cluster has that concern any client (discovery, the
    /// public health and version paths, self-reviews), each unless one of its name is there.
    pub fn with_bootstrap(mut self) -> Policy {
        let everyone = ["system:authenticated", "system:unauthenticated"];
        let defaults = [
            (
                "system:discovery",
                urls(&[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ]),
                &everyone[..1],
            ),
            (
                "system:public-info-viewer",
                urls(&["/healthz", "/livez", "/readyz", "/version", "/version/"]),
                &everyone[..],
            ),
            (
                "system:basic-user",
                vec![
                    rule(
                        &["authorization.k8s.io"],
                        &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                        &["create"],
                    ),
                    rule(
                        &["authentication.k8s.io"],
                        &["selfsubjectreviews"],
                        &["create"],
                    ),
                ],
                &everyone[..1],
            ),
        ];
        for (name, rules, groups) in defaults {
            if !self.cluster_roles.iter().any(|r| named(&r.metadata, name)) {
                self.cluster_roles.push(ClusterRole {
                    metadata: meta(name),
                    rules: Some(rules),
                    ..Default::default()
                });
            }
            if !self
                .cluster_role_bindings
                .iter()
                .any(|b| named(&b.metadata, name))
            {
                self.cluster_role_bindings.push(ClusterRoleBinding {
                    metadata: meta(name),
                    role_ref: RoleRef {
                        api_group: "rbac.authorization.k8s.io".into(),
                        kind: "ClusterRole".into(),
                        name: name.into(),
                    },
                    subjects: Some(
                        groups
                            .iter()
                            .map(|g| Subject {
                                api_group: Some("rbac.authorization.k8s.io".into()),
                                kind: "Group".into(),
                                name: g.to_string(),
                                namespace: None,
                            })
                            .collect(),
                    ),
                });
            }
        }
        self
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    }
}

fn named(meta: &ObjectMeta, name: &str) -> bool {
    meta.name.as_deref() == Some(name)
}

fn urls(paths: &[&str]) -> Vec<PolicyRule> {
    vec![PolicyRule {
        non_resource_urls: Some(paths.iter().map(|p| p.to_string()).collect()),
        verbs: vec!["get".into()],
        ..Default::default()
    }]
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(own(groups)),
        resources: Some(own(resources)),
        verbs: own(verbs),
        ..Default::default()
    }
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// `reason` is what the RBAC authorizer adds to a denial: empty, or `RBAC: ...` naming
    /// the roles that bindings refer to but that do not exist.
    Deny {
        reason: String,
    },
}

/// Whether `policy` lets `user` do `attrs`, as the RBAC authorizer decides: every
/// ClusterRoleBinding naming the user, then (for a namespaced request) every RoleBinding in
/// that namespace naming them, each granting its role's rules; allowed when any rule
/// matches.
pub fn authorize(policy: &Policy, user: &User, attrs: &Attributes) -> Decision {
    let mut errors: Vec<String> = Vec::new();
    let cluster = policy
        .cluster_role_bindings
        .iter()
        .map(|b| (&b.role_ref, b.subjects.as_deref(), ""));
    let local = policy
        .role_bindings
        .iter()
        .filter(|b| {
            !attrs.namespace.is_empty() && b.metadata.namespace == Some(attrs.namespace.clone())
        })
        .map(|b| (&b.role_ref, b.subjects.as_deref(), attrs.namespace.as_str()));
    for (role_ref, subjects, binding_ns) in cluster.chain(local) {
        if !subjects
            .unwrap_or_default()
            .iter()
            .any(|s| applies_to(user, s, binding_ns))
        {
            continue;
        }
        match rules_of(policy, role_ref, binding_ns) {
            Ok(rules) => {
                if rules.iter().any(|r| rule_allows(attrs, r)) {
                    return Decision::Allow;
                }
            }
            Err(e) => {
                if !errors.contains(&e) {
                    errors.push(e);
                }
            }
        }
    }
    let reason = match errors.as_slice() {
        [] => String::new(),
        [one] => format!("RBAC: {one}"),
        many => format!("RBAC: [{}]", many.join(", ")),
    };
    Decision::Deny { reason }
}

/// Whether a binding's subject is this user. A ServiceAccount subject without a namespace
/// means the binding's own.
fn applies_to(user: &User, subject: &Subject, binding_ns: &str) -> bool {
    match subject.kind.as_str() {
        "User" => user.name == subject.name,
        "Group" => user.groups.contains(&subject.name),
        "ServiceAccount" => {
            let ns = subject
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{}", subject.name)
        }
        _ => false,
    }
}

/// The rules a binding grants, or the error the server reports for a missing role.
fn rules_of<'a>(
    policy: &'a Policy,
    role_ref: &RoleRef,
    binding_ns: &str,
) -> Result<&'a [PolicyRule], String> {
    let found = match role_ref.kind.as_str() {
        "ClusterRole" => policy
            .cluster_roles
            .iter()
            .find(|r| named(&r.metadata, &role_ref.name))
            .map(|r| r.rules.as_deref().unwrap_or_default())
            .ok_or("clusterrole"),
        "Role" => policy
            .roles
            .iter()
            .find(|r| {
                named(&r.metadata, &role_ref.name)
                    && r.metadata.namespace.as_deref().unwrap_or("") == binding_ns
            })
            .map(|r| r.rules.as_deref().unwrap_or_default())
            .ok_or("role"),
        other => return Err(format!("unsupported role reference kind: {other:?}")),
    };
    found.map_err(|kind| {
        format!(
            "{kind}.rbac.authorization.k8s.io {:?} not found",
            role_ref.name
        )
    })
}

/// One rule against one request: verbs, then groups, resources (with `*/sub` for a
/// subresource of any resource) and resourceNames for a resource request, or
/// nonResourceURLs (`*` as a suffix wildcard) for another.
pub fn rule_allows(attrs: &Attributes, rule: &PolicyRule) -> bool {
    let any = |list: Option<&Vec<String>>, want: &str| {
        list.is_some_and(|l| l.iter().any(|v| v == "*" || v == want))
    };
    if !rule.verbs.iter().any(|v| v == "*" || *v == attrs.verb) {
        return false;
    }
    if !attrs.resource_request {
        return rule.non_resource_urls.iter().flatten().any(|u| {
            u == "*"
                || *u == attrs.path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| attrs.path.starts_with(prefix))
        });
    }
    let combined = if attrs.subresource.is_empty() {
        attrs.resource.clone()
    } else {
        format!("{}/{}", attrs.resource, attrs.subresource)
    };
    let resource_matches = rule.resources.iter().flatten().any(|r| {
        r == "*"
            || *r == combined
            || (!attrs.subresource.is_empty()
                && r.strip_prefix("*/") == Some(attrs.subresource.as_str()))
    });
    let name_matches = match rule.resource_names.as_deref() {
        None | Some([]) => true,
        Some(names) => names.contains(&attrs.name),
    };
    any(rule.api_groups.as_ref(), &attrs.api_group) && resource_matches && name_matches
}

/// A denial as the server words it: the message (`pods is forbidden: User "u" cannot list
/// resource "pods" in API group "" at the cluster scope`), and the Status details' group,
/// kind (the resource) and name.
pub fn forbidden(user: &User, attrs: &Attributes, reason: &str) -> (String, Details) {
    let u = &user.name;
    let verb = &attrs.verb;
    let what = if !attrs.resource_request {
        format!("User {u:?} cannot {verb} path {:?}", attrs.path)
    } else {
        let mut resource = attrs.resource.clone();
        if !attrs.subresource.is_empty() {
            resource = format!("{resource}/{}", attrs.subresource);
        }
        let group = &attrs.api_group;
        let scope = if attrs.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", attrs.namespace)
        };
        format!("User {u:?} cannot {verb} resource {resource:?} in API group {group:?} {scope}")
    };
    let what = if reason.is_empty() {
        what
    } else {
        format!("{what}: {reason}")
    };
    let (group, resource) = if attrs.resource_request {
        (attrs.api_group.clone(), attrs.resource.clone())
    } else {
        (String::new(), String::new())
    };
    let qualified = match (resource.is_empty(), group.is_empty()) {
        (true, true) => String::new(),
        (false, true) => resource.clone(),
        _ => format!("{resource}.{group}"),
    };
    let message = if qualified.is_empty() {
        format!("forbidden: {what}")
    } else if attrs.name.is_empty() {
        format!("{qualified} is forbidden: {what}")
    } else {
        format!("{qualified} {:?} is forbidden: {what}", attrs.name)
    };
    let details = Details {
        group,
        kind: resource,
        name: if attrs.resource_request {
            attrs.name.clone()
        } else {
            String::new()
        },
    };
    (message, details)
}

/// A Status's `details` for a denial (empty fields are left out on the wire).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    pub group: String,
    pub kind: String,
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(method: &str, path: &str, query: &str) -> Attributes {
        Attributes::from_request(method, path, query).expect("a readable path")
    }

    fn ferry() -> User {
        User::service_account("kube-system", "ferry")
    }

    fn cluster_role(name: &str, rules: Vec<PolicyRule>) -> ClusterRole {
        ClusterRole {
            metadata: meta(name),
            rules: Some(rules),
            ..Default::default()
        }
    }

    fn subject(kind: &str, name: &str, ns: Option<&str>) -> Subject {
        Subject {
            kind: kind.into(),
            name: name.into(),
            namespace: ns.map(String::from),
            api_group: None,
        }
    }

    fn role_ref(kind: &str, name: &str) -> RoleRef {
        RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: kind.into(),
            name: name.into(),
        }
    }

    fn cluster_binding(role: &str, subjects: Vec<Subject>) -> ClusterRoleBinding {
        ClusterRoleBinding {
            metadata: meta(role),
            role_ref: role_ref("ClusterRole", role),
            subjects: Some(subjects),
        }
    }

    /// The manifest's ClusterRole, bound to its service account.
    fn manifest_like() -> Policy {
        Policy {
            cluster_roles: vec![cluster_role(
                "ferry",
                vec![
                    rule(&[""], &["namespaces", "pods"], &["get", "list", "watch"]),
                    rule(
                        &["networking.k8s.io"],
                        &["networkpolicies"],
                        &["get", "list", "watch"],
                    ),
                ],
            )],
            cluster_role_bindings: vec![cluster_binding(
                "ferry",
                vec![subject("ServiceAccount", "ferry", Some("kube-system"))],
            )],
            ..Default::default()
        }
        .with_bootstrap()
    }

    fn allowed(p: &Policy, u: &User, a: &Attributes) -> bool {
        authorize(p, u, a) == Decision::Allow
    }

    #[test]
    fn request_attributes_follow_the_servers_reading() {
        let a = attrs("GET", "/api/v1/pods", "");
        assert_eq!(
            (
                a.resource_request,
                a.verb.as_str(),
                a.api_group.as_str(),
                a.resource.as_str()
            ),
            (true, "list", "", "pods")
        );
        assert_eq!(attrs("GET", "/api/v1/pods", "watch=true").verb, "watch");
        assert_eq!(attrs("GET", "/api/v1/pods", "watch=1").verb, "watch");
        assert_eq!(attrs("GET", "/api/v1/pods", "watch=false").verb, "list");
        assert_eq!(attrs("GET", "/api/v1/watch/pods", "").verb, "watch");
        let a = attrs(
            "GET",
            "/apis/networking.k8s.io/v1/namespaces/x/networkpolicies/deny",
            "",
        );
        assert_eq!(
            (
                a.verb.as_str(),
                a.api_group.as_str(),
                a.api_version.as_str()
            ),
            ("get", "networking.k8s.io", "v1")
        );
        assert_eq!((a.namespace.as_str(), a.name.as_str()), ("x", "deny"));
        let a = attrs("PUT", "/api/v1/namespaces/x/pods/a/status", "");
        assert_eq!(
            (
                a.verb.as_str(),
                a.resource.as_str(),
                a.subresource.as_str(),
                a.name.as_str()
            ),
            ("update", "pods", "status", "a")
        );
        assert_eq!(
            attrs("POST", "/api/v1/namespaces/x/pods", "").verb,
            "create"
        );
        assert_eq!(
            attrs("PATCH", "/api/v1/namespaces/x/pods/a", "").verb,
            "patch"
        );
        assert_eq!(
            attrs("DELETE", "/api/v1/namespaces/x/pods/a", "").verb,
            "delete"
        );
        assert_eq!(
            attrs("DELETE", "/api/v1/namespaces/x/pods", "").verb,
            "deletecollection"
        );
        // A Node is cluster-scoped: no namespace, whatever the verb.
        for (method, path, query, verb, name) in [
            ("PATCH", "/api/v1/nodes/n1", "", "patch", "n1"),
            ("GET", "/api/v1/nodes/n1", "", "get", "n1"),
            ("GET", "/api/v1/nodes", "", "list", ""),
            ("GET", "/api/v1/nodes", "watch=1", "watch", ""),
        ] {
            let a = attrs(method, path, query);
            assert_eq!(
                (
                    a.verb.as_str(),
                    a.resource.as_str(),
                    a.name.as_str(),
                    a.namespace.as_str(),
                    a.api_group.as_str()
                ),
                (verb, "nodes", name, "", ""),
                "{method} {path}?{query}"
            );
        }
        // A namespace is its own namespace; its status is its subresource.
        let a = attrs("GET", "/api/v1/namespaces/x", "");
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.namespace.as_str()),
            ("namespaces", "x", "x")
        );
        let a = attrs("PUT", "/api/v1/namespaces/x/status", "");
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.subresource.as_str()),
            ("namespaces", "x", "status")
        );
        // A list narrowed to one name carries it.
        let a = attrs(
            "GET",
            "/api/v1/namespaces/x/pods",
            "fieldSelector=metadata.name%3Da&watch=1",
        );
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("watch", "a"));
        assert_eq!(
            attrs("GET", "/api/v1/pods", "fieldSelector=metadata.name!%3Da").name,
            ""
        );
        // Not resources: discovery, health, a group's discovery document.
        for path in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/networking.k8s.io/v1",
            "/healthz",
            "/",
        ] {
            let a = attrs("GET", path, "");
            assert!(!a.resource_request, "{path}: {a:?}");
            assert_eq!(a.verb, "get");
        }
        assert!(Attributes::from_request("GET", "/api/v1/watch", "").is_err());
    }

    #[test]
    fn the_manifests_role_allows_reading_what_ferry_reads() {
        let p = manifest_like();
        let u = ferry();
        for (path, query) in [
            ("/api/v1/pods", ""),
            ("/api/v1/pods", "watch=true"),
            ("/api/v1/namespaces", "watch=1"),
            ("/api/v1/namespaces/x", ""),
            ("/api/v1/namespaces/x/pods/a", ""),
            ("/apis/networking.k8s.io/v1/networkpolicies", ""),
            (
                "/apis/networking.k8s.io/v1/namespaces/x/networkpolicies",
                "watch=true",
            ),
        ] {
            assert!(
                allowed(&p, &u, &attrs("GET", path, query)),
                "{path}?{query}"
            );
        }
        for (method, path) in [
            ("GET", "/api/v1/secrets"),
            ("POST", "/api/v1/namespaces/x/pods"),
            ("PATCH", "/api/v1/namespaces/x/pods/a"),
            ("DELETE", "/api/v1/namespaces/x/pods"),
            ("GET", "/api/v1/namespaces/x/pods/a/log"),
            ("PUT", "/api/v1/namespaces/x/pods/a/status"),
            ("GET", "/apis/apps/v1/daemonsets"),
            // The right resource in the wrong group.
            ("GET", "/apis/extensions/v1beta1/networkpolicies"),
            ("GET", "/metrics"),
        ] {
            let a = attrs(method, path, "");
            assert_eq!(
                authorize(&p, &u, &a),
                Decision::Deny { reason: "".into() },
                "{method} {path}"
            );
        }
        // Another service account of the same name elsewhere is someone else.
        let other = User::service_account("default", "ferry");
        assert!(!allowed(&p, &other, &attrs("GET", "/api/v1/pods", "")));
    }

    #[test]
    fn discovery_is_open_to_the_authenticated_and_health_to_everyone() {
        let p = manifest_like();
        let someone = User::service_account("default", "nobody");
        for path in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/networking.k8s.io/v1",
            "/version",
            "/openapi/v3",
        ] {
            assert!(allowed(&p, &someone, &attrs("GET", path, "")), "{path}");
        }
        assert!(!allowed(&p, &someone, &attrs("POST", "/api", "")));
        assert!(!allowed(&p, &someone, &attrs("GET", "/metrics", "")));
        let anon = User::anonymous();
        assert!(allowed(&p, &anon, &attrs("GET", "/healthz", "")));
        assert!(allowed(&p, &anon, &attrs("GET", "/version", "")));
        assert!(!allowed(&p, &anon, &attrs("GET", "/api", "")));
        assert!(!allowed(&p, &anon, &attrs("GET", "/api/v1/pods", "")));
        // Without the bootstrap roles, nothing is implied.
        let bare = Policy {
            cluster_roles: Vec::new(),
            ..manifest_like()
        };
        let bare = Policy {
            cluster_role_bindings: bare.cluster_role_bindings[..1].to_vec(),
            ..bare
        };
        assert!(!allowed(&bare, &someone, &attrs("GET", "/api", "")));
    }

    #[test]
    fn wildcards_match_every_verb_group_resource_and_path() {
        let admin = Policy {
            cluster_roles: vec![cluster_role(
                "admin",
                vec![
                    rule(&["*"], &["*"], &["*"]),
                    PolicyRule {
                        non_resource_urls: Some(vec!["*".into()]),
                        verbs: vec!["*".into()],
                        ..Default::default()
                    },
                ],
            )],
            cluster_role_bindings: vec![cluster_binding(
                "admin",
                vec![subject("User", "alice", None)],
            )],
            ..Default::default()
        };
        let alice = User {
            name: "alice".into(),
            groups: vec!["system:authenticated".into()],
        };
        for (m, p) in [
            ("DELETE", "/apis/apps/v1/namespaces/x/deployments"),
            ("PATCH", "/api/v1/namespaces/x/pods/a/status"),
            ("POST", "/metrics"),
        ] {
            assert!(allowed(&admin, &alice, &attrs(m, p, "")), "{m} {p}");
        }
        // `*/status`: the status of anything, and nothing else.
        let status = Policy {
            cluster_roles: vec![cluster_role(
                "st",
                vec![rule(&[""], &["*/status"], &["update"])],
            )],
            cluster_role_bindings: vec![cluster_binding(
                "st",
                vec![subject("User", "alice", None)],
            )],
            ..Default::default()
        };
        assert!(allowed(
            &status,
            &alice,
            &attrs("PUT", "/api/v1/namespaces/x/pods/a/status", "")
        ));
        assert!(allowed(
            &status,
            &alice,
            &attrs("PUT", "/api/v1/nodes/n1/status", "")
        ));
        assert!(!allowed(
            &status,
            &alice,
            &attrs("PUT", "/api/v1/namespaces/x/pods/a", "")
        ));
        // A path wildcard is a prefix; a plain path is itself only.
        let paths = Policy {
            cluster_roles: vec![cluster_role("p", urls(&["/logs/*", "/metrics"]))],
            cluster_role_bindings: vec![cluster_binding("p", vec![subject("User", "alice", None)])],
            ..Default::default()
        };
        assert!(allowed(
            &paths,
            &alice,
            &attrs("GET", "/logs/kube/a.log", "")
        ));
        assert!(allowed(&paths, &alice, &attrs("GET", "/metrics", "")));
        assert!(!allowed(
            &paths,
            &alice,
            &attrs("GET", "/metrics/cadvisor", "")
        ));
    }

    #[test]
    fn subresources_need_their_own_rule() {
        let p = Policy {
            cluster_roles: vec![cluster_role(
                "r",
                vec![rule(&[""], &["pods", "pods/log"], &["get", "update"])],
            )],
            cluster_role_bindings: vec![cluster_binding("r", vec![subject("Group", "ops", None)])],
            ..Default::default()
        };
        let u = User {
            name: "bob".into(),
            groups: vec!["ops".into()],
        };
        assert!(allowed(
            &p,
            &u,
            &attrs("GET", "/api/v1/namespaces/x/pods/a/log", "")
        ));
        assert!(!allowed(
            &p,
            &u,
            &attrs("PUT", "/api/v1/namespaces/x/pods/a/status", "")
        ));
        assert!(!allowed(
            &p,
            &u,
            &attrs("GET", "/api/v1/namespaces/x/pods/a/exec", "")
        ));
    }

    #[test]
    fn resource_names_limit_to_those_names() {
        let p = Policy {
            cluster_roles: vec![cluster_role(
                "one",
                vec![PolicyRule {
                    resource_names: Some(vec!["a".into()]),
                    ..rule(&[""], &["pods"], &["get", "list", "watch"])
                }],
            )],
            cluster_role_bindings: vec![cluster_binding(
                "one",
                vec![subject("User", "carol", None)],
            )],
            ..Default::default()
        };
        let u = User {
            name: "carol".into(),
            groups: vec![],
        };
        assert!(allowed(
            &p,
            &u,
            &attrs("GET", "/api/v1/namespaces/x/pods/a", "")
        ));
        assert!(!allowed(
            &p,
            &u,
            &attrs("GET", "/api/v1/namespaces/x/pods/b", "")
        ));
        // A list of everything names nothing; a list pinned to the name names it.
        assert!(!allowed(
            &p,
            &u,
            &attrs("GET", "/api/v1/namespaces/x/pods", "")
        ));
        assert!(allowed(
            &p,
            &u,
            &attrs(
                "GET",
                "/api/v1/namespaces/x/pods",
                "fieldSelector=metadata.name%3Da&watch=true"
            )
        ));
    }

    #[test]
    fn role_bindings_grant_only_in_their_namespace() {
        let p = Policy {
            cluster_roles: vec![cluster_role(
                "view",
                vec![rule(&[""], &["pods"], &["list"])],
            )],
            roles: vec![Role {
                metadata: ObjectMeta {
                    namespace: Some("x".into()),
                    ..meta("editor")
                },
                rules: Some(vec![rule(&[""], &["pods"], &["create", "patch"])]),
            }],
            role_bindings: vec![
                // A ServiceAccount subject without a namespace: the binding's own.
                RoleBinding {
                    metadata: ObjectMeta {
                        namespace: Some("x".into()),
                        ..meta("edit")
                    },
                    role_ref: role_ref("Role", "editor"),
                    subjects: Some(vec![subject("ServiceAccount", "ferry", None)]),
                },
                // A ClusterRole granted in one namespace.
                RoleBinding {
                    metadata: ObjectMeta {
                        namespace: Some("x".into()),
                        ..meta("view")
                    },
                    role_ref: role_ref("ClusterRole", "view"),
                    subjects: Some(vec![subject(
                        "ServiceAccount",
                        "ferry",
                        Some("kube-system"),
                    )]),
                },
            ],
            ..Default::default()
        };
        let in_x = User::service_account("x", "ferry");
        let ks = ferry();
        assert!(allowed(
            &p,
            &in_x,
            &attrs("POST", "/api/v1/namespaces/x/pods", "")
        ));
        assert!(allowed(
            &p,
            &in_x,
            &attrs("PATCH", "/api/v1/namespaces/x/pods/a", "")
        ));
        assert!(!allowed(
            &p,
            &in_x,
            &attrs("POST", "/api/v1/namespaces/y/pods", "")
        ));
        assert!(!allowed(
            &p,
            &ks,
            &attrs("POST", "/api/v1/namespaces/x/pods", "")
        ));
        assert!(allowed(
            &p,
            &ks,
            &attrs("GET", "/api/v1/namespaces/x/pods", "")
        ));
        assert!(!allowed(
            &p,
            &ks,
            &attrs("GET", "/api/v1/namespaces/y/pods", "")
        ));
        // The namespaced grant does not reach the cluster-wide list.
        assert!(!allowed(&p, &ks, &attrs("GET", "/api/v1/pods", "")));
        // A Role of the same name in another namespace is not this binding's role.
        let mut elsewhere = p.clone();
        elsewhere.roles[0].metadata.namespace = Some("y".into());
        assert_eq!(
            authorize(
                &elsewhere,
                &in_x,
                &attrs("POST", "/api/v1/namespaces/x/pods", "")
            ),
            Decision::Deny {
                reason: "RBAC: role.rbac.authorization.k8s.io \"editor\" not found".into()
            }
        );
    }

    #[test]
    fn users_and_groups_are_subjects_too() {
        let p = Policy {
            cluster_roles: vec![cluster_role("r", vec![rule(&[""], &["pods"], &["list"])])],
            cluster_role_bindings: vec![cluster_binding(
                "r",
                vec![
                    subject("User", "dave", None),
                    subject("Group", "system:serviceaccounts:ci", None),
                ],
            )],
            ..Default::default()
        };
        let list = attrs("GET", "/api/v1/pods", "");
        let dave = User {
            name: "dave".into(),
            groups: vec![],
        };
        assert!(allowed(&p, &dave, &list));
        assert!(allowed(&p, &User::service_account("ci", "builder"), &list));
        assert!(!allowed(&p, &ferry(), &list));
        // A user named like a service account is not one: kinds are not interchangeable.
        let p2 = Policy {
            cluster_role_bindings: vec![cluster_binding("r", vec![subject("User", "ferry", None)])],
            ..p.clone()
        };
        assert!(!allowed(&p2, &ferry(), &list));
        // An unknown subject kind binds no one.
        let p3 = Policy {
            cluster_role_bindings: vec![cluster_binding("r", vec![subject("Robot", "dave", None)])],
            ..p
        };
        assert!(!allowed(&p3, &dave, &list));
    }

    #[test]
    fn a_missing_role_is_named_in_the_reason() {
        let p = Policy {
            cluster_role_bindings: vec![
                cluster_binding("gone", vec![subject("User", "erin", None)]),
                ClusterRoleBinding {
                    role_ref: role_ref("Team", "x"),
                    ..cluster_binding("odd", vec![subject("User", "erin", None)])
                },
            ],
            ..Default::default()
        };
        let erin = User {
            name: "erin".into(),
            groups: vec![],
        };
        assert_eq!(
            authorize(&p, &erin, &attrs("GET", "/api/v1/pods", "")),
            Decision::Deny {
                reason: "RBAC: [clusterrole.rbac.authorization.k8s.io \"gone\" not found, \
                         unsupported role reference kind: \"Team\"]"
                    .into()
            }
        );
    }

    #[test]
    fn denials_are_worded_as_the_server_words_them() {
        let u = ferry();
        let (m, d) = forbidden(&u, &attrs("GET", "/api/v1/pods", ""), "");
        assert_eq!(
            m,
            "pods is forbidden: User \"system:serviceaccount:kube-system:ferry\" cannot list \
             resource \"pods\" in API group \"\" at the cluster scope"
        );
        assert_eq!(
            d,
            Details {
                kind: "pods".into(),
                ..Default::default()
            }
        );
        let (m, d) = forbidden(
            &u,
            &attrs(
                "PATCH",
                "/apis/networking.k8s.io/v1/namespaces/x/networkpolicies/deny",
                "",
            ),
            "",
        );
        assert_eq!(
            m,
            "networkpolicies.networking.k8s.io \"deny\" is forbidden: User \
             \"system:serviceaccount:kube-system:ferry\" cannot patch resource \
             \"networkpolicies\" in API group \"networking.k8s.io\" in the namespace \"x\""
        );
        assert_eq!(
            (d.group.as_str(), d.kind.as_str(), d.name.as_str()),
            ("networking.k8s.io", "networkpolicies", "deny")
        );
        let (m, _) = forbidden(
            &u,
            &attrs("PUT", "/api/v1/namespaces/x/pods/a/status", ""),
            "",
        );
        assert!(m.contains("cannot update resource \"pods/status\""), "{m}");
        let (m, d) = forbidden(&User::anonymous(), &attrs("GET", "/metrics", ""), "RBAC: x");
        assert_eq!(
            m,
            "forbidden: User \"system:anonymous\" cannot get path \"/metrics\": RBAC: x"
        );
        assert_eq!(d, Details::default());
    }
}
