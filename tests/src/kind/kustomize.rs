//! What `kubectl apply -k DIR` sends, for the kustomizations ferry ships: `resources`
//! (files, and directories holding a kustomization), `components` (directories holding a
//! `kind: Component`), `patches` (strategic-merge patches from a file or inline, matched
//! by kind and name), and `images` (`kustomize edit set image`). Anything else in a
//! kustomization is refused, so a new transformer there fails a test instead of being
//! silently skipped.
//!
//! As kustomize builds: a kustomization's resources first (each directory built on its
//! own, its output appended), then its components in order (each adds its resources to
//! what was gathered so far and runs its patches over all of it), then its own patches and
//! images. A Component listed in `resources`, or a Kustomization in `components`, is
//! refused, as is what kustomize's loader refuses: a directory at or above one already on
//! the way to it (`cycle detected`: an overlay in a subdirectory of its base cannot name
//! `..`), and a resource file outside the kustomization's own directory.
//!
//! A strategic merge here is RFC 7386's merge patch, except that lists of maps holding a
//! `name` (containers, env, volumes, volumeMounts) merge entry by entry, as Kubernetes'
//! strategic merge does for those lists.

use std::path::{Path, PathBuf};

use serde_json::Value;

const KUSTOMIZATION: (&str, &str) = ("Kustomization", "kustomize.config.k8s.io/v1beta1");
const COMPONENT: (&str, &str) = ("Component", "kustomize.config.k8s.io/v1alpha1");

/// Every object `kubectl apply -k dir` would apply, in order.
pub fn build(dir: &Path) -> Vec<Value> {
    let mut objects = Vec::new();
    let root = root_of(dir);
    run(&root, KUSTOMIZATION, &mut objects, &[]);
    objects
}

/// `dir` absolute and without `..` or symlinks, as kustomize's loader confirms a root.
fn root_of(dir: &Path) -> PathBuf {
    dir.canonicalize()
        .unwrap_or_else(|e| panic!("{}: not a directory ({e})", dir.display()))
}

/// The root of the kustomization at `path` (relative to `from`), as kustomize's loader
/// makes a new one: refused when it is at or above a root on the way to it.
fn new_root(from: &Path, path: &str, chain: &[PathBuf]) -> PathBuf {
    let root = root_of(&from.join(path));
    for visited in chain {
        assert!(
            !visited.starts_with(&root),
            "cycle detected: candidate root '{}' contains visited root '{}'",
            root.display(),
            visited.display()
        );
    }
    root
}

/// Builds the kustomization in `dir`, which must be of `role` (a Kustomization, or a
/// Component), onto `objects`; `chain` holds the roots that led here.
fn run(dir: &Path, role: (&str, &str), objects: &mut Vec<Value>, chain: &[PathBuf]) {
    let file = dir.join("kustomization.yaml");
    let at = file.display().to_string();
    let k = documents_at(&file)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{at} is empty"));
    // kustomize takes a kustomization without `kind` for a Kustomization.
    let kind = k["kind"].as_str().unwrap_or(KUSTOMIZATION.0);
    let api = k["apiVersion"].as_str().unwrap_or(KUSTOMIZATION.1);
    assert!(
        (kind, api) == role,
        "{at}: a {kind} ({api}) where a {} ({}) is wanted",
        role.0,
        role.1
    );
    let known = [
        "apiVersion",
        "kind",
        "resources",
        "components",
        "patches",
        "images",
    ];
    if let Some(map) = k.as_object() {
        for key in map.keys() {
            assert!(
                known.contains(&key.as_str()),
                "{at}: `{key}` is not understood by the test harness's kustomize"
            );
        }
    }
    let mut chain = chain.to_vec();
    chain.push(dir.to_path_buf());
    for r in k["resources"].as_array().into_iter().flatten() {
        let r = r
            .as_str()
            .unwrap_or_else(|| panic!("{at}: a resource is not a path"));
        let path = dir.join(r);
        if path.is_dir() {
            let base = new_root(dir, r, &chain);
            let mut built = Vec::new();
            run(&base, KUSTOMIZATION, &mut built, &chain);
            objects.extend(built);
        } else {
            objects.extend(documents_at(&file_in(dir, r, &at)));
        }
    }
    for c in k["components"].as_array().into_iter().flatten() {
        let c = c
            .as_str()
            .unwrap_or_else(|| panic!("{at}: a component is not a path"));
        let component = new_root(dir, c, &chain);
        run(&component, COMPONENT, objects, &chain);
    }
    for p in k["patches"].as_array().into_iter().flatten() {
        let patches: Vec<Value> = match (p["path"].as_str(), p["patch"].as_str()) {
            (Some(path), _) => documents_at(&file_in(dir, path, &at)),
            (None, Some(text)) => documents_of(text, &at),
            _ => panic!("{at}: a patch needs `path` or `patch`"),
        };
        for patch in patches {
            let kind = patch["kind"].as_str().unwrap_or_default().to_string();
            let name = patch["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let target = objects
                .iter_mut()
                .find(|o| o["kind"] == kind.as_str() && o["metadata"]["name"] == name.as_str())
                .unwrap_or_else(|| panic!("{at}: patch for {kind}/{name} matches nothing"));
            merge(target, &patch);
        }
    }
    for i in k["images"].as_array().into_iter().flatten() {
        let name = i["name"].as_str().unwrap_or_default();
        set_image(objects, name, i["newName"].as_str(), i["newTag"].as_str());
    }
}

/// The file `path` of the kustomization in `dir`: kustomize loads no file outside its
/// kustomization's directory (another directory is a base to name, not files to reach).
fn file_in(dir: &Path, path: &str, at: &str) -> PathBuf {
    let file = dir
        .join(path)
        .canonicalize()
        .unwrap_or_else(|e| panic!("{at}: {path}: {e}"));
    assert!(
        file.starts_with(dir),
        "{at}: security; file '{}' is not in or below '{}'",
        file.display(),
        dir.display()
    );
    file
}

/// Every YAML document of the file at `path`, as JSON (empty documents left out).
pub fn documents_at(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    documents_of(&text, &path.display().to_string())
}

/// Every YAML document of `text` (from `origin`, for messages), as JSON.
pub fn documents_of(text: &str, origin: &str) -> Vec<Value> {
    yaml_rust2::YamlLoader::load_from_str(text)
        .unwrap_or_else(|e| panic!("{origin} is not YAML: {e}"))
        .iter()
        .map(|d| crate::manifest::yaml_to_json(d).unwrap_or_else(|e| panic!("{origin}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// `kustomize edit set image NAME=NEW_NAME:NEW_TAG`, on built objects.
pub fn set_image(objects: &mut [Value], name: &str, new_name: Option<&str>, new_tag: Option<&str>) {
    for o in objects.iter_mut() {
        let spec = &mut o["spec"]["template"]["spec"];
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_array_mut().into_iter().flatten() {
                let Some(image) = c["image"].as_str() else {
                    continue;
                };
                let (repo, tag) = match image.rsplit_once(':') {
                    Some((r, t)) if !t.contains('/') => (r, Some(t)),
                    _ => (image, None),
                };
                if repo != name {
                    continue;
                }
                let repo = new_name.unwrap_or(repo);
                let image = match new_tag.or(tag) {
                    Some(t) => format!("{repo}:{t}"),
                    None => repo.to_string(),
                };
                c["image"] = Value::String(image);
            }
        }
    }
}

/// A strategic merge of `patch` into `target` (see the module's comment).
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (Value::Array(t), Value::Array(p))
            if p.iter().all(|e| e["name"].is_string()) && !p.is_empty() =>
        {
            for e in p {
                match t.iter_mut().find(|x| x["name"] == e["name"]) {
                    Some(x) => merge(x, e),
                    None => t.push(e.clone()),
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_maps_and_named_lists_and_deletes_nulls() {
        let mut t = json!({"data": {"a": "1", "b": "2"},
            "spec": {"containers": [{"name": "x", "args": ["1"], "image": "i"}]}});
        merge(
            &mut t,
            &json!({"data": {"a": null, "c": "3"},
            "spec": {"containers": [{"name": "x", "args": ["2", "3"]}, {"name": "y"}]}}),
        );
        assert_eq!(
            t,
            json!({"data": {"b": "2", "c": "3"},
            "spec": {"containers": [{"name": "x", "args": ["2", "3"], "image": "i"}, {"name": "y"}]}})
        );
    }

    /// Writes `files` (path, text) under a new directory.
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        for (path, text) in files {
            let p = d.path().join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
        d
    }

    const BASE: &str = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
                        resources: [cm.yaml, ds.yaml]\n";
    const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n\
                      data: {datastore: kubernetes, keep: k}\n";
    const DS: &str = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: d}\n\
                      spec: {template: {spec: {containers: [{name: x, image: ferry:dev, \
                      env: [{name: A, value: a}]}]}}}\n";
    const COMP: &str = "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n\
                        resources: [extra.yaml]\npatches:\n\
                        - patch: |\n    kind: ConfigMap\n    metadata: {name: c}\n    \
                        data: {datastore: etcd, endpoints: e}\n\
                        - patch: |\n    kind: DaemonSet\n    metadata: {name: d}\n    \
                        spec: {template: {spec: {containers: [{name: x, env: [{name: B, value: b}]}], \
                        volumes: [{name: v}]}}}\n\
                        - patch: |\n    kind: Service\n    metadata: {name: s}\n    \
                        spec: {clusterIP: 10.96.0.66}\n";
    const EXTRA: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n\
                         spec: {clusterIP: 10.96.0.1}\n";

    #[test]
    fn a_component_adds_its_resources_and_patches_what_came_before_it() {
        let d = tree(&[
            ("base/kustomization.yaml", BASE),
            ("base/cm.yaml", CM),
            ("base/ds.yaml", DS),
            ("base/components/c/kustomization.yaml", COMP),
            ("base/components/c/extra.yaml", EXTRA),
            (
                "overlay/kustomization.yaml",
                "resources: [../base]\ncomponents: [../base/components/c]\n\
                 patches:\n- patch: |\n    kind: ConfigMap\n    metadata: {name: c}\n    \
                 data: {endpoints: mine}\nimages: [{name: ferry, newTag: t}]\n",
            ),
        ]);
        let base = build(&d.path().join("base"));
        assert_eq!(base.len(), 2, "{base:?}");
        assert_eq!(
            base[0]["data"],
            json!({"datastore": "kubernetes", "keep": "k"})
        );
        let o = build(&d.path().join("overlay"));
        let kinds: Vec<&str> = o.iter().filter_map(|x| x["kind"].as_str()).collect();
        assert_eq!(kinds, ["ConfigMap", "DaemonSet", "Service"]);
        // The component's patches, then the overlay's own (after every component).
        assert_eq!(
            o[0]["data"],
            json!({"datastore": "etcd", "keep": "k", "endpoints": "mine"})
        );
        let spec = &o[1]["spec"]["template"]["spec"];
        assert_eq!(
            spec["containers"][0]["env"],
            json!([{"name": "A", "value": "a"}, {"name": "B", "value": "b"}])
        );
        assert_eq!(spec["containers"][0]["image"], "ferry:t");
        assert_eq!(spec["volumes"], json!([{"name": "v"}]));
        // A component patches its own resources too.
        assert_eq!(o[2]["spec"]["clusterIP"], "10.96.0.66");
    }

    #[test]
    #[should_panic(
        expected = "a Component (kustomize.config.k8s.io/v1alpha1) where a Kustomization"
    )]
    fn a_component_is_no_resource() {
        let d = tree(&[
            ("c/kustomization.yaml", COMP),
            ("c/extra.yaml", EXTRA),
            ("o/kustomization.yaml", "resources: [../c]\n"),
        ]);
        build(&d.path().join("o"));
    }

    #[test]
    #[should_panic(
        expected = "a Kustomization (kustomize.config.k8s.io/v1beta1) where a Component"
    )]
    fn a_kustomization_is_no_component() {
        let d = tree(&[
            ("base/kustomization.yaml", BASE),
            ("base/cm.yaml", CM),
            ("base/ds.yaml", DS),
            ("o/kustomization.yaml", "components: [../base]\n"),
        ]);
        build(&d.path().join("o"));
    }

    #[test]
    #[should_panic(expected = "cycle detected")]
    fn an_overlay_below_its_base_cannot_name_it() {
        // kustomize's loader refuses `..` from base/etcd/: base contains base/etcd.
        let d = tree(&[
            ("base/kustomization.yaml", BASE),
            ("base/cm.yaml", CM),
            ("base/ds.yaml", DS),
            ("base/etcd/kustomization.yaml", "resources: [..]\n"),
        ]);
        build(&d.path().join("base/etcd"));
    }

    #[test]
    #[should_panic(expected = "is not in or below")]
    fn a_file_outside_the_kustomization_is_refused() {
        let d = tree(&[
            ("base/cm.yaml", CM),
            ("o/kustomization.yaml", "resources: [../base/cm.yaml]\n"),
        ]);
        build(&d.path().join("o"));
    }

    #[test]
    fn sets_an_image_as_kustomize_does() {
        let mut o = vec![json!({"spec": {"template": {"spec": {
            "initContainers": [{"image": "ferry:dev"}],
            "containers": [{"image": "ferry:dev"}, {"image": "other:1"}]}}}})];
        set_image(&mut o, "ferry", Some("registry/ferry"), Some("abc"));
        let s = &o[0]["spec"]["template"]["spec"];
        assert_eq!(s["initContainers"][0]["image"], "registry/ferry:abc");
        assert_eq!(s["containers"][0]["image"], "registry/ferry:abc");
        assert_eq!(s["containers"][1]["image"], "other:1");
    }
}
