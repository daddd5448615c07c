//! ROS 2 topic names: the rules rcl checks them by, and how it resolves a relative (`state`) or
//! private (`~/action`) name against the node's namespace, so that a launch namespace moves
//! the node's topics. Checked when the config loads, not when r2r first refuses one on the
//! robot; replay resolves names the same way to find them in a bag.

/// The node's name; `~/x` resolves to `<namespace>/df_planner/x`.
pub const NODE_NAME: &str = "df_planner";

/// rmw's longest topic name (`RMW_TOPIC_MAX_NAME_LENGTH`).
const MAX_NAME_LENGTH: usize = 247;

/// What is wrong with `name` as a ROS 2 topic name, or None. The rules are rcl's
/// (`rcl_validate_topic_name`) except that substitutions (`{node}`) are refused: write the
/// name out.
pub fn topic_name_error(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the name is empty".into());
    }
    // rmw's limit on a full name, which resolving only lengthens.
    if name.len() > MAX_NAME_LENGTH {
        return Some(format!(
            "{} characters, more than ROS 2's {MAX_NAME_LENGTH}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '~')))
    {
        let why = if matches!(c, '{' | '}') {
            "substitutions such as {node} are not supported: write the name out"
        } else {
            "a name has only letters, digits, '_', '/' and a leading '~'"
        };
        return Some(format!("character {c:?}: {why}"));
    }
    if name[1..].contains('~') {
        return Some("'~' only starts a private name (~/action)".into());
    }
    if name.len() > 1 && name.starts_with('~') && !name.starts_with("~/") {
        return Some("'~' is followed by '/' (~/action)".into());
    }
    if name.ends_with('/') {
        return Some("the name ends with '/'".into());
    }
    if name.contains("//") {
        return Some("the name has an empty part ('//')".into());
    }
    let mut tokens = name.trim_start_matches('~').split('/').filter(|t| !t.is_empty());
    if let Some(t) = tokens.find(|t| t.starts_with(|c: char| c.is_ascii_digit())) {
        return Some(format!("part {t:?} starts with a digit"));
    }
    None
}

/// What is wrong with `namespace` as a node namespace (absolute: `/` or `/arm1`), or None.
pub fn namespace_error(namespace: &str) -> Option<String> {
    if !namespace.starts_with('/') {
        return Some("a namespace starts with '/' (/arm1)".into());
    }
    if namespace.contains('~') {
        return Some("a namespace has no '~'".into());
    }
    (namespace != "/").then(|| topic_name_error(namespace)).flatten()
}

/// The fully qualified name rcl gives the valid topic `name` for the node [`NODE_NAME`] in
/// the valid `namespace`, before remapping: absolute names stay, relative ones go under the
/// namespace, private ones under the namespace and the node's name.
pub fn resolve_topic(name: &str, namespace: &str) -> String {
    let under = |prefix: &str, rest: &str| format!("{}/{rest}", prefix.trim_end_matches('/'));
    if name.starts_with('/') {
        name.to_owned()
    } else if let Some(rest) = name.strip_prefix('~') {
        let node = under(namespace, NODE_NAME);
        match rest.strip_prefix('/') {
            Some(rest) => under(&node, rest),
            None => node,
        }
    } else {
        under(namespace, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ros_topic_names_pass_and_others_say_what_is_wrong() {
        for ok in [
            "/joint_states",
            "state",
            "~/action",
            "~",
            "/a/b_2/c",
            "camera/front/image_raw",
        ] {
            assert_eq!(topic_name_error(ok), None, "{ok}");
        }
        let long = "/a".repeat(124);
        for (bad, why) in [
            ("", "empty"),
            ("/df planner/action", "' '"),
            ("/arm-1/state", "'-'"),
            ("/{node}/action", "substitutions"),
            ("/a/~b", "only starts"),
            ("~action", "followed by '/'"),
            ("/action/", "ends with"),
            ("/a//b", "empty part"),
            ("/arm/2cam", "\"2cam\" starts with a digit"),
            ("3d", "starts with a digit"),
            (long.as_str(), "248 characters"),
        ] {
            let got = topic_name_error(bad).unwrap_or_else(|| panic!("{bad:?} passed"));
            assert!(got.contains(why), "{bad:?}: {got}");
        }
    }

    #[test]
    fn namespaces_are_absolute() {
        for ok in ["/", "/arm1", "/lab/arm1"] {
            assert_eq!(namespace_error(ok), None, "{ok}");
        }
        for bad in ["arm1", "/arm1/", "/~", "", "/1arm"] {
            assert!(namespace_error(bad).is_some(), "{bad:?} passed");
        }
    }

    #[test]
    fn names_resolve_as_rcl_resolves_them() {
        for (name, namespace, full) in [
            ("/joint_states", "/arm1", "/joint_states"),
            ("state", "/", "/state"),
            ("state", "/arm1", "/arm1/state"),
            (
                "camera/front/image_raw",
                "/lab/arm1",
                "/lab/arm1/camera/front/image_raw",
            ),
            ("~/action", "/", "/df_planner/action"),
            ("~/action", "/arm1", "/arm1/df_planner/action"),
            ("~", "/arm1", "/arm1/df_planner"),
        ] {
            assert_eq!(resolve_topic(name, namespace), full, "{name} in {namespace}");
        }
    }
}
