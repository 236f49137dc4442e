//! ACT on a provider that is a CoAP device: a request to the device, its URI rendered from a template.

use hub_plugin_sdk::prelude::*;

use crate::config::DeviceEntry;
use crate::values::cf;
use crate::{cbor, names};

/// Checks a URI template: `coap://` or `//`, balanced braces, placeholders that are names.
pub fn check_template(template: &str) -> Result<(), String> {
    if !(template.starts_with("coap://") || template.starts_with("//")) {
        return Err(format!("{template:?} must start with coap:// (coaps:// is not supported)"));
    }
    render(template, &|_| Some(String::new())).map(|_| ())
}

/// Replaces each `{name}` with `lookup(name)`, percent-encoded.
fn render(template: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(format!("{template:?}: a '}}' without its '{{'"));
        }
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| format!("{template:?}: a '{{' without its '}}'"))?;
        let name = &after[..close];
        if !names::is_valid(name) {
            return Err(format!("{template:?}: {{{name}}} is not a placeholder name"));
        }
        let value = lookup(name).ok_or_else(|| format!("no value for {{{name}}}"))?;
        out.push_str(&names::percent_encode(&value));
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Builds the request for `request` to `device`; returns what the caller gets back.
pub fn request(device: &DeviceEntry, request: &ActRequest, out: &mut Output) -> Result<Value, String> {
    let action = format!("{}/{}", request.service, request.resource);
    if !device.actions.is_empty() && !device.actions.contains_key(&action) {
        return Err(format!("{action} is not an action of {}", request.provider));
    }
    let lookup = |name: &str| -> Option<String> {
        match name {
            "provider" => Some(request.provider.clone()),
            "service" => Some(request.service.clone()),
            "resource" => Some(request.resource.clone()),
            other => match request.params.get(other)? {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            },
        }
    };
    let uri = render(&device.uri, &lookup)?;
    let address = names::address_of(&uri).ok_or_else(|| format!("{uri:?} is not a device URI"))?;
    let params = Value::Object(request.params.clone());
    let payload = match device.content_format {
        cf::CBOR => cbor::encode(&params),
        cf::TEXT => match request.params.values().next() {
            Some(Value::String(s)) if request.params.len() == 1 => s.clone().into_bytes(),
            Some(other) if request.params.len() == 1 => other.to_string().into_bytes(),
            _ => params.to_string().into_bytes(),
        },
        _ => params.to_string().into_bytes(),
    };
    let method = device.method.as_deref().unwrap_or("POST").to_ascii_uppercase();
    let mut message = OutboundMessage::new(transport::COAP, &address, payload);
    message.metadata.insert("method".to_owned(), method.clone());
    message.metadata.insert("content_format".to_owned(), device.content_format.to_string());
    message.metadata.insert("confirmable".to_owned(), device.confirmable.to_string());
    out.send(message);
    Ok(json!({ "sent": { "uri": uri, "method": method } }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let lookup = |name: &str| (name == "level").then(|| "a b".to_owned());
        assert_eq!(render("coap://h/x/{level}", &lookup).unwrap(), "coap://h/x/a%20b");
        assert!(render("coap://h/{nope}", &lookup).is_err());
        for bad in ["coap://h/{", "coap://h/}", "coap://h/{a b}", "coap://h/{}", "http://h/x", "coaps://h/x"] {
            assert!(check_template(bad).is_err(), "{bad}");
        }
        assert!(check_template("//h:5683/{resource}?v={value}").is_ok());
    }
}
