//! `meshctl waypoint generate`: the Kubernetes Gateway API `Gateway` that asks for a waypoint
//! (class `istio-waypoint`), as `istioctl waypoint generate` prints it. Applying it is what
//! deploys the waypoint: istiod in Istio, the lab's waypoint controller here.

use serde_json::{Value, json};

/// The GatewayClass whose Gateways are waypoints.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// The HBONE port a waypoint listens on.
pub const HBONE_PORT: u16 = 15008;
/// The label saying which traffic a waypoint handles (`service`, `workload`, `all`, `none`).
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";
/// The annotation of Istio's per-service-account waypoints: serve only this account's pods.
pub const FOR_SERVICE_ACCOUNT_ANNOTATION: &str = "istio.io/for-service-account";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{what} {value:?} is not a valid Kubernetes name: use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"
    )]
    InvalidName { what: &'static str, value: String },
    #[error("cannot write the Gateway as YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// The namespace the waypoint serves and runs in.
    #[arg(short = 'n', long = "namespace")]
    pub namespace: String,
    /// The Gateway's name; `waypoint`, or the service account's name with
    /// --for-service-account.
    #[arg(long)]
    pub name: Option<String>,
    /// A waypoint for one service account's workloads only (Istio's per-account waypoints).
    #[arg(long = "for-service-account", value_name = "SA")]
    pub for_service_account: Option<String>,
}

/// The Gateway for a waypoint in `namespace`; the name defaults to `waypoint`, or to the
/// service account's name when the waypoint is for one account.
pub fn gateway(
    namespace: &str,
    name: Option<&str>,
    for_service_account: Option<&str>,
) -> Result<Value> {
    let name = name.or(for_service_account).unwrap_or("waypoint");
    check_name("namespace", namespace)?;
    check_name("name", name)?;
    let mut metadata = json!({
        "name": name,
        "namespace": namespace,
        "labels": {WAYPOINT_FOR_LABEL: "service"},
    });
    if let Some(account) = for_service_account {
        check_name("service account", account)?;
        metadata["annotations"] = json!({FOR_SERVICE_ACCOUNT_ANNOTATION: account});
    }
    Ok(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": metadata,
        "spec": {
            "gatewayClassName": WAYPOINT_CLASS,
            "listeners": [{"name": "mesh", "port": HBONE_PORT, "protocol": "HBONE"}],
        },
    }))
}

/// The Gateway as YAML, ready for `kubectl apply -f -` (or `sim apply`).
pub fn generate(args: &GenerateArgs) -> Result<String> {
    let gateway = gateway(
        &args.namespace,
        args.name.as_deref(),
        args.for_service_account.as_deref(),
    )?;
    Ok(serde_yaml_ng::to_string(&gateway)?)
}

/// An RFC 1123 label, as Kubernetes requires of namespace and service names.
fn check_name(what: &'static str, value: &str) -> Result<()> {
    let bytes = value.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-';
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(namespace: &str, name: Option<&str>, account: Option<&str>) -> GenerateArgs {
        GenerateArgs {
            namespace: namespace.to_owned(),
            name: name.map(str::to_owned),
            for_service_account: account.map(str::to_owned),
        }
    }

    fn parsed(args: &GenerateArgs) -> Value {
        let text = generate(args).unwrap();
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"))
    }

    #[test]
    fn namespace_waypoint_parses_back_with_istios_fields() {
        let gateway = parsed(&args("shop", None, None));
        assert_eq!(gateway["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(gateway["kind"], "Gateway");
        assert_eq!(gateway["metadata"]["name"], "waypoint");
        assert_eq!(gateway["metadata"]["namespace"], "shop");
        assert_eq!(
            gateway["metadata"]["labels"],
            json!({"istio.io/waypoint-for": "service"})
        );
        assert!(gateway["metadata"].get("annotations").is_none());
        assert_eq!(gateway["spec"]["gatewayClassName"], "istio-waypoint");
        assert_eq!(
            gateway["spec"]["listeners"],
            json!([{"name": "mesh", "port": 15008, "protocol": "HBONE"}])
        );
    }

    #[test]
    fn name_flag_names_the_gateway() {
        let gateway = parsed(&args("shop", Some("shop-wp"), None));
        assert_eq!(gateway["metadata"]["name"], "shop-wp");
    }

    #[test]
    fn service_account_waypoint_is_annotated_and_named_after_the_account() {
        let gateway = parsed(&args("shop", None, Some("reviews")));
        assert_eq!(gateway["metadata"]["name"], "reviews");
        assert_eq!(
            gateway["metadata"]["annotations"],
            json!({"istio.io/for-service-account": "reviews"})
        );
        let named = parsed(&args("shop", Some("wp"), Some("reviews")));
        assert_eq!(named["metadata"]["name"], "wp");
        assert_eq!(
            named["metadata"]["annotations"]["istio.io/for-service-account"],
            "reviews"
        );
    }

    #[test]
    fn invalid_names_are_refused_naming_the_flag() {
        let error = generate(&args("Shop", None, None)).unwrap_err().to_string();
        assert!(error.contains("namespace \"Shop\""), "{error}");
        let error = generate(&args("shop", Some("-wp"), None))
            .unwrap_err()
            .to_string();
        assert!(error.contains("name \"-wp\""), "{error}");
        let error = generate(&args("shop", Some("wp"), Some("a_b")))
            .unwrap_err()
            .to_string();
        assert!(error.contains("service account \"a_b\""), "{error}");
    }
}
