//! What `kubectl apply -k DIR` sends, for the kustomizations ferry ships: `resources`
//! (files, and directories holding a kustomization), `patches` (strategic-merge patches
//! from a file or inline, matched by kind and name), and `images` (`kustomize edit set
//! image`). Anything else in a kustomization is refused, so a new transformer there fails
//! a test instead of being silently skipped.
//!
//! A strategic merge here is RFC 7386's merge patch, except that lists of maps holding a
//! `name` (containers, env, volumes, volumeMounts) merge entry by entry, as Kubernetes'
//! strategic merge does for those lists.

use std::path::Path;

use serde_json::Value;

/// Every object `kubectl apply -k dir` would apply, in order.
pub fn build(dir: &Path) -> Vec<Value> {
    let file = dir.join("kustomization.yaml");
    let k = documents_at(&file)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{} is empty", file.display()));
    let known = ["apiVersion", "kind", "resources", "patches", "images"];
    if let Some(map) = k.as_object() {
        for key in map.keys() {
            assert!(
                known.contains(&key.as_str()),
                "{}: `{key}` is not understood by the test harness's kustomize",
                file.display()
            );
        }
    }
    let mut objects = Vec::new();
    for r in k["resources"].as_array().into_iter().flatten() {
        let r = r
            .as_str()
            .unwrap_or_else(|| panic!("{}: a resource is not a path", file.display()));
        let path = dir.join(r);
        if path.is_dir() {
            objects.extend(build(&path));
        } else {
            objects.extend(documents_at(&path));
        }
    }
    for p in k["patches"].as_array().into_iter().flatten() {
        let patches: Vec<Value> = match (p["path"].as_str(), p["patch"].as_str()) {
            (Some(path), _) => documents_at(&dir.join(path)),
            (None, Some(text)) => documents_of(text, &file.display().to_string()),
            _ => panic!("{}: a patch needs `path` or `patch`", file.display()),
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
                .unwrap_or_else(|| {
                    panic!(
                        "{}: patch for {kind}/{name} matches nothing",
                        file.display()
                    )
                });
            merge(target, &patch);
        }
    }
    for i in k["images"].as_array().into_iter().flatten() {
        let name = i["name"].as_str().unwrap_or_default();
        set_image(
            &mut objects,
            name,
            i["newName"].as_str(),
            i["newTag"].as_str(),
        );
    }
    objects
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
