//! ROS 2 topic names: the rules rcl checks them by, and how it resolves a relative (`state`) or
//! private (`~/action`) name against the node's namespace and name, then remaps it, so that a
//! launch namespace moves the node's topics and launch remappings rename them. Checked when
//! the config loads, not when r2r first refuses one on the robot; replay resolves names the
//! same way to find them in a bag (on the robot rcl does it, from the launch's `--ros-args`).

/// The node's name unless the launch renames it; `~/x` resolves to `<namespace>/df_planner/x`.
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
fn namespace_error(namespace: &str) -> Option<String> {
    if !namespace.starts_with('/') {
        return Some("a namespace starts with '/' (/arm1)".into());
    }
    if namespace.contains('~') {
        return Some("a namespace has no '~'".into());
    }
    (namespace != "/").then(|| topic_name_error(namespace)).flatten()
}

/// What is wrong with `name` as a node name, or None (rcl's rules: letters, digits and '_',
/// not starting with a digit).
fn node_name_error(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the name is empty".into());
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
        return Some(format!("character {c:?}: a node name has only letters, digits and '_'"));
    }
    name.starts_with(|c: char| c.is_ascii_digit())
        .then(|| "it starts with a digit".into())
}

/// A remap rule as `ros2 launch` remappings and `--ros-args -r` give it: `from:=to`, or
/// `node:from:=to` for the node named `node` only; `from` may say `rostopic://`.
#[derive(Debug, Clone, PartialEq)]
struct Remap {
    node: Option<String>,
    from: String,
    to: String,
}

impl Remap {
    /// None for a `rosservice://` rule: it renames no topic.
    fn parse(rule: &str) -> Result<Option<Self>, String> {
        let refuse = |why: String| Err(format!("remap {rule:?}: {why}"));
        let Some((lhs, to)) = rule.split_once(":=") else {
            return refuse("expected FROM:=TO (a topic name on each side)".into());
        };
        // `node:` comes before a scheme's `://`.
        let (node, from) = match lhs.split_once(':') {
            Some((node, from)) if !from.starts_with("//") => (Some(node), from),
            _ => (None, lhs),
        };
        if let Some(why) = node.and_then(node_name_error) {
            return refuse(format!("the node name before ':': {why}"));
        }
        if from.starts_with("rosservice://") {
            return Ok(None);
        }
        let from = from.strip_prefix("rostopic://").unwrap_or(from);
        if matches!(from, "__ns" | "__node" | "__name") {
            return refuse("the node's namespace and name are --namespace and --node-name".into());
        }
        for (side, name) in [("FROM", from), ("TO", to)] {
            // rcl's rule lexer is stricter than its topic names: `~` only as `~/`, and `__`
            // starts `__ns` or `__node` wherever it stands.
            let why = match name {
                "~" => Some("'~' alone: a rule names the node's own topics as ~/name".into()),
                _ if name.contains("__") => Some("'__' in a rule: rcl reads it as __ns or __node".into()),
                _ => topic_name_error(name),
            };
            if let Some(why) = why {
                return refuse(format!("{side}: {why}"));
            }
        }
        Ok(Some(Self {
            node: node.map(String::from),
            from: from.into(),
            to: to.into(),
        }))
    }
}

/// The names the node's topics have on the wire, as rcl gives them: a name resolved in the
/// node's namespace (private ones under its name too), then replaced by the first remap rule
/// for this node whose `from`, resolved the same way, is that name (its `to` resolved too).
#[derive(Debug, Clone, PartialEq)]
pub struct TopicNames {
    namespace: String,
    node: String,
    remaps: Vec<Remap>,
}

impl TopicNames {
    /// The node `node` in `namespace` with the remap rules `remaps`, in order; refused with the
    /// reason naming the argument. The namespace is taken as a launch file's `namespace`
    /// (launch_ros makes it absolute and drops a trailing '/'): `arm1/` is `/arm1`.
    pub fn new(namespace: &str, node: &str, remaps: &[String]) -> Result<Self, String> {
        let absolute = format!("/{}", namespace.trim_start_matches('/').trim_end_matches('/'));
        if let Some(why) = namespace_error(&absolute) {
            return Err(format!(
                "namespace {namespace:?}: expected a ROS 2 namespace such as / or /arm1 ({why})"
            ));
        }
        if let Some(why) = node_name_error(node) {
            return Err(format!("node name {node:?}: {why}"));
        }
        let remaps = remaps.iter().map(|r| Remap::parse(r)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            namespace: absolute,
            node: node.into(),
            remaps: remaps.into_iter().flatten().collect(),
        })
    }

    /// The fully qualified name of the valid topic `name` of the node, remapped.
    pub fn resolve(&self, name: &str) -> String {
        let full = self.expand(name);
        self.remaps
            .iter()
            .filter(|r| r.node.as_ref().is_none_or(|n| *n == self.node))
            .find(|r| self.expand(&r.from) == full)
            .map_or(full, |r| self.expand(&r.to))
    }

    /// The fully qualified name of the valid topic `name`, not remapped (a topic the node does
    /// not use itself): absolute names stay, relative ones go under the namespace, private
    /// ones under the namespace and the node's name.
    pub fn expand(&self, name: &str) -> String {
        let under = |prefix: &str, rest: &str| format!("{}/{rest}", prefix.trim_end_matches('/'));
        if name.starts_with('/') {
            name.to_owned()
        } else if let Some(rest) = name.strip_prefix('~') {
            let node = under(&self.namespace, &self.node);
            match rest.strip_prefix('/') {
                Some(rest) => under(&node, rest),
                None => node,
            }
        } else {
            under(&self.namespace, name)
        }
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
    fn namespaces_are_absolute_and_a_launch_file_s_spellings_are_taken_as_launch_ros_takes_them() {
        for (launch, namespace) in [
            ("", "/"),
            ("arm1", "/arm1"),
            ("/arm1/", "/arm1"),
            ("lab/arm1", "/lab/arm1"),
        ] {
            let names = TopicNames::new(launch, NODE_NAME, &[]).unwrap();
            assert_eq!(
                names.resolve("state"),
                format!("{}/state", namespace.trim_end_matches('/'))
            );
        }
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
            let names = TopicNames::new(namespace, NODE_NAME, &[]).unwrap();
            assert_eq!(names.resolve(name), full, "{name} in {namespace}");
        }
    }

    #[test]
    fn remaps_and_a_renamed_node_apply_as_rcl_applies_them() {
        let rules = [
            "/camera/front/image_raw:=/arm/front",
            // Resolved on both sides: ~/action is /arm1/planner/action, cmd /arm1/cmd.
            "~/action:=cmd",
            "other_node:state:=/never",
            "planner:state:=/arm1/joint_states",
            "state:=/not_reached",
            "rostopic://~/plan:=/arm1/plans",
            "rosservice://~/plan:=/never",
        ]
        .map(String::from);
        let names = TopicNames::new("/arm1", "planner", &rules).unwrap();
        for (name, full) in [
            ("/camera/front/image_raw", "/arm/front"),
            ("~/action", "/arm1/cmd"),
            ("/arm1/planner/action", "/arm1/cmd"),
            ("state", "/arm1/joint_states"),
            ("~/plan", "/arm1/plans"),
            ("~/diagnostics", "/arm1/planner/diagnostics"),
            ("/camera/wrist/image_raw", "/camera/wrist/image_raw"),
        ] {
            assert_eq!(names.resolve(name), full, "{name}");
        }
        for (namespace, node, rule, why) in [
            (
                "/1arm",
                NODE_NAME,
                "a:=b",
                "namespace \"/1arm\": expected a ROS 2 namespace",
            ),
            ("/", "df-planner", "a:=b", "node name \"df-planner\": character '-'"),
            ("/", NODE_NAME, "a=b", "remap \"a=b\": expected FROM:=TO"),
            ("/", NODE_NAME, "a:=", "remap \"a:=\": TO: the name is empty"),
            ("/", NODE_NAME, "__ns:=/arm1", "--namespace and --node-name"),
            ("/", NODE_NAME, "~:=/arm", "remap \"~:=/arm\": FROM: '~' alone"),
            ("/", NODE_NAME, "action:=~", "TO: '~' alone"),
            ("/", NODE_NAME, "my__action:=a", "FROM: '__' in a rule"),
            ("/", NODE_NAME, "action:=/a/__b", "TO: '__' in a rule"),
            (
                "/",
                NODE_NAME,
                "2nd:a:=b",
                "the node name before ':': it starts with a digit",
            ),
        ] {
            let err = TopicNames::new(namespace, node, &[rule.to_string()]).unwrap_err();
            assert!(err.contains(why), "{rule}: {err}");
        }
    }
}
