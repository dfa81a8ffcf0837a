//! Chat prompts rendered with the checkpoint's own template, as transformers'
//! `apply_chat_template` renders it: the Jinja template from `chat_template.jinja` or
//! `tokenizer_config.json`'s `chat_template` (a string, or named templates of which `default`
//! is used), with `trim_blocks` and `lstrip_blocks`, loop controls, `raise_exception`,
//! `strftime_now`, a `tojson` filter, the special tokens as variables and Python's string
//! methods (`.strip()`, `.startswith()`, ...).

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde::Serialize;
use serde_json::Value as Json;
use std::path::Path;

/// One message of a chat, as the template sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A checkpoint's chat template with the tokens it refers to.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// bos_token, eos_token, ... as strings.
    special_tokens: serde_json::Map<String, Json>,
}

const TEMPLATE: &str = "chat";

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The template of the checkpoint folder `dir`: `Ok(None)` when it has none, an error
    /// naming the file when the template does not parse.
    pub fn of_checkpoint(dir: &Path) -> Result<Option<Self>, String> {
        let config_path = dir.join("tokenizer_config.json");
        let config: Json = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format!("{}: {e}", config_path.display()))?,
            Err(_) => Json::Null,
        };
        let file = dir.join("chat_template.jinja");
        let source = if file.is_file() {
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?
        } else {
            match config.get("chat_template") {
                Some(Json::String(s)) => s.clone(),
                Some(Json::Array(named)) => match named
                    .iter()
                    .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(Json::as_str)
                {
                    Some(s) => s.to_string(),
                    None => return Ok(None),
                },
                _ => return Ok(None),
            }
        };
        Self::new(source, &config)
            .map(Some)
            .map_err(|e| format!("{}: chat_template: {e}", config_path.display()))
    }

    /// A template from its Jinja `source`, with the special tokens of a
    /// `tokenizer_config.json`.
    pub fn new(source: String, tokenizer_config: &Json) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<Value, _> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", |format: String| -> String {
            chrono::Local::now().format(&format).to_string()
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE, source)
            .map_err(|e| e.to_string())?;
        let mut special_tokens = serde_json::Map::new();
        for key in [
            "bos_token",
            "eos_token",
            "unk_token",
            "pad_token",
            "sep_token",
            "cls_token",
            "mask_token",
        ] {
            // A plain string, or an AddedToken object {"content": ...}.
            let token = match tokenizer_config.get(key) {
                Some(Json::String(s)) => Some(s.clone()),
                Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).map(Into::into),
                _ => None,
            };
            if let Some(t) = token {
                special_tokens.insert(key.into(), Json::String(t));
            }
        }
        Ok(Self {
            env,
            special_tokens,
        })
    }

    /// The prompt for `messages`, ending with the assistant's turn opened
    /// (`add_generation_prompt=True`). A template's own `raise_exception` (e.g. roles in the
    /// wrong order) comes back as the error text.
    pub fn render(&self, messages: &[Message]) -> Result<String, String> {
        /// The variables transformers passes (messages keep their keys' order: `tojson`
        /// shows it).
        #[derive(Serialize)]
        struct Context<'a> {
            messages: &'a [Message],
            add_generation_prompt: bool,
            tools: Option<()>,
            documents: Option<()>,
            #[serde(flatten)]
            special_tokens: &'a serde_json::Map<String, Json>,
        }
        let context = Context {
            messages,
            add_generation_prompt: true,
            tools: None,
            documents: None,
            special_tokens: &self.special_tokens,
        };
        let template = self.env.get_template(TEMPLATE).map_err(|e| e.to_string())?;
        template
            .render(Value::from_serialize(&context))
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidOperation => e.detail().unwrap_or("template error").to_string(),
                _ => format!("rendering the chat template: {e}"),
            })
    }
}

/// transformers' `tojson`: Python's `json.dumps(value, ensure_ascii=False, indent=indent)`
/// (`", "` and `": "` between items, non-ASCII kept, keys in their order), not minijinja's
/// HTML-safe one.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    py_json(&value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn py_json(
    v: &Value,
    indent: Option<usize>,
    level: usize,
    out: &mut String,
) -> Result<(), minijinja::Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => match i64::try_from(v.clone()) {
            Ok(i) if v.as_i64().is_some() => out.push_str(&i.to_string()),
            _ => {
                let f = f64::try_from(v.clone())?;
                // Python's repr: a float always shows a fraction or an exponent.
                if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
                    out.push_str(&format!("{f:.1}"));
                } else if f.is_finite() {
                    out.push_str(&f.to_string());
                } else {
                    out.push_str(if f.is_nan() {
                        "NaN"
                    } else if f > 0.0 {
                        "Infinity"
                    } else {
                        "-Infinity"
                    });
                }
            }
        },
        ValueKind::String => out.push_str(
            &serde_json::to_string(v.as_str().unwrap_or_default()).expect("strings serialise"),
        ),
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, level + 1);
                out.push_str(&serde_json::to_string(&key.to_string()).expect("strings serialise"));
                out.push_str(": ");
                py_json(&v.get_item(key)?, indent, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, level + 1);
                py_json(item, indent, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        _ => out.push_str(&serde_json::to_string(&v.to_string()).expect("strings serialise")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Qwen2's ChatML template (tokenizer_config.json of Qwen/Qwen2-0.5B-Instruct), whose
    /// rendering by transformers 4.x is the literal below.
    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn msg(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn chatml_renders_as_transformers_does() {
        let t = ChatTemplate::new(CHATML.into(), &json!({"eos_token": "<|im_end|>"})).unwrap();
        let got = t.render(&[msg("user", "Hi there")]).unwrap();
        assert_eq!(
            got,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn llama2_style_template_uses_special_tokens_methods_and_exceptions() {
        // The shape of LLaMA-2-chat's template: bos_token, .strip(), raise_exception.
        let source = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'].strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'].strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
        let t = ChatTemplate::new(
            source.into(),
            &json!({"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>"}),
        )
        .unwrap();
        assert_eq!(
            t.render(&[msg("user", "  hello  ")]).unwrap(),
            "<s>[INST] hello [/INST]"
        );
        let e = t.render(&[msg("system", "x")]).unwrap_err();
        assert_eq!(e, "System role not supported");
    }

    /// Every case of `scripts/make_chat_fixtures.py`: what transformers' apply_chat_template
    /// renders (or the error a template raises), byte for byte.
    #[test]
    fn templates_render_as_transformers_renders_them() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/chat-templates/cases.json"
        );
        let fixtures: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = fixtures["cases"].as_array().unwrap();
        assert!(cases.len() >= 20);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let t = ChatTemplate::new(
                case["template"].as_str().unwrap().into(),
                &case["tokenizer_config"],
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            let messages: Vec<Message> = case["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| msg(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
                .collect();
            match (case.get("expected"), case.get("expected_error")) {
                (Some(want), _) => assert_eq!(
                    t.render(&messages)
                        .unwrap_or_else(|e| panic!("{name}: {e}")),
                    want.as_str().unwrap(),
                    "{name}"
                ),
                (_, Some(want)) => {
                    assert_eq!(
                        t.render(&messages).unwrap_err(),
                        want.as_str().unwrap(),
                        "{name}"
                    )
                }
                _ => panic!("{name}: no expectation"),
            }
        }
    }

    #[test]
    fn trim_and_lstrip_blocks_follow_jinja2() {
        let source = "{% for m in messages %}\n    {{ m.content }}\n{% endfor %}";
        let t = ChatTemplate::new(source.into(), &Json::Null).unwrap();
        assert_eq!(
            t.render(&[msg("user", "a"), msg("user", "b")]).unwrap(),
            "    a\n    b\n"
        );
    }

    #[test]
    fn a_checkpoint_without_a_template_has_none_and_a_broken_one_is_named() {
        let d = tempfile::tempdir().unwrap();
        assert!(ChatTemplate::of_checkpoint(d.path()).unwrap().is_none());
        std::fs::write(
            d.path().join("tokenizer_config.json"),
            r#"{"chat_template": "{% for %}"}"#,
        )
        .unwrap();
        let e = ChatTemplate::of_checkpoint(d.path()).unwrap_err();
        assert!(e.contains("tokenizer_config.json: chat_template"), "{e}");
    }
}
