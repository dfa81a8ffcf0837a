//! `ipfs-accelerate serve` over real loopback HTTP and WebSocket: the OpenAI routes against the
//! CLI's own results, every error path the server promises, streaming, disconnects, limits,
//! metrics, the OpenAPI document and graceful shutdown.

mod common;

use common::{bin, fixture, post_while_sending, Served};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

/// A copy of the qwen2 fixture in `dir`, with `edit` applied to the JSON file `name`.
fn qwen_copy(dir: &Path, name: &str, edit: impl FnOnce(&mut Value)) -> String {
    let src = Path::new(&fixture("qwen2-tiny")).to_path_buf();
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    let path = dir.join(name);
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, json.to_string()).unwrap();
    dir.to_string_lossy().into_owned()
}

/// A copy of the qwen2 fixture whose tokenizer_config.json carries `template`.
fn with_chat_template(dir: &Path, template: &str) -> String {
    qwen_copy(dir, "tokenizer_config.json", |c| {
        c["chat_template"] = json!(template)
    })
}

/// A copy of the qwen2 fixture with room for `LONG_GENERATION` tokens. The fixture's 128
/// positions go by in about 15 ms (8000 tokens/s here), too short to hold a slot while a test
/// sends its next request; a generation this long outlasts it, or stalls on the unread socket.
fn with_long_context(dir: &Path) -> String {
    qwen_copy(dir, "config.json", |c| {
        c["max_position_embeddings"] = json!(LONG_GENERATION + 64)
    })
}

const LONG_GENERATION: usize = 100_000;

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Greedy text of `generate --json` for the same model and prompt.
fn cli_greedy(model: &str, prompt: &str, tokens: usize) -> String {
    let out = bin()
        .args(["generate", "--model", model, "--prompt", prompt, "--json"])
        .args(["--max-new-tokens", &tokens.to_string(), "--ignore-eos"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["text"].as_str().unwrap().to_string()
}

#[test]
fn openai_routes_answer_as_the_cli_and_every_bad_request_is_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let chat = with_chat_template(&dir.path().join("qwen-chat"), CHATML);
    let raising = with_chat_template(
        &dir.path().join("qwen-raising"),
        "{{ raise_exception('Conversation roles must alternate') }}",
    );
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "s3cret\n").unwrap();
    let bert = fixture("bert-tiny");
    let qwen = fixture("qwen2-tiny");
    let models = [bert.as_str(), qwen.as_str(), &chat, &raising].join(",");
    let mut s = Served::start(&[
        "--models",
        &models,
        "--api-key-file",
        key_file.to_str().unwrap(),
        "--max-body-mb",
        "1",
    ]);

    // Authorisation: inference routes need the key, health and metrics do not.
    let (status, body) = s.post_json("/v1/embeddings", json!({"model": bert, "input": "x"}));
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(s.get("/health").0, 200);
    s.key = Some("wrong".into());
    assert_eq!(s.get("/v1/models").0, 401);
    s.key = Some("s3cret".into());

    let (status, models) = s.get("/v1/models");
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 4);
    assert_eq!(models["data"][0]["engine"], "native");

    // Embeddings: one batched request equals the texts one by one, base64 equals floats.
    let (status, both) = s.post_json(
        "/v1/embeddings",
        json!({"model": bert, "input": ["a short text", "a somewhat longer second text"]}),
    );
    assert_eq!(status, 200, "{both}");
    assert_eq!(both["object"], "list");
    assert!(both["usage"]["prompt_tokens"].as_u64().unwrap() > 4);
    let (_, one) = s.post_json(
        "/v1/embeddings",
        json!({"model": bert, "input": "a short text"}),
    );
    let row = |v: &Value, i: usize| -> Vec<f64> {
        v["data"][i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let (a, b) = (row(&both, 0), row(&one, 0));
    assert_eq!(a.len(), b.len());
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5));
    let (_, encoded) = s.post_json(
        "/v1/embeddings",
        json!({"model": bert, "input": "a short text", "encoding_format": "base64"}),
    );
    let bytes: Vec<u8> = b.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
    use base64::Engine as _;
    assert_eq!(
        encoded["data"][0]["embedding"].as_str().unwrap(),
        base64::engine::general_purpose::STANDARD.encode(bytes)
    );

    // Completions: greedy text equals `generate`'s; the stream says the same in chunks.
    let want = cli_greedy(&qwen, "Hello there", 6);
    let request = json!({"model": qwen, "prompt": "Hello there", "max_tokens": 6,
                         "temperature": 0, "stop_token_ids": []});
    let (status, done) = s.post_json("/v1/completions", request.clone());
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["choices"][0]["text"], want.as_str());
    assert!(done["usage"]["completion_tokens"].as_u64().unwrap() <= 6);
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = s.stream("/v1/completions", streamed);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, want);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], done["usage"]);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "text_completion" && c["id"] == chunks[0]["id"]));

    // A stop string cuts the text before it and ends with finish_reason stop.
    if let Some(cut) = want
        .char_indices()
        .map(|(i, _)| i)
        .filter(|&i| i > 0)
        .nth(1)
    {
        let stop: String = want[cut..].chars().take(2).collect();
        let mut r = request.clone();
        r["stop"] = json!([stop]);
        let (_, v) = s.post_json("/v1/completions", r);
        let text = v["choices"][0]["text"].as_str().unwrap();
        assert!(
            want.starts_with(text) && !text.contains(&stop),
            "{text:?} {stop:?}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }

    // Concurrent generations with prompts of different lengths, arriving one after another
    // (each joins the running batch between two decode steps): each says what it says alone.
    let prompts = [
        "Hello there",
        "Once upon a time in a land far away",
        "Hi",
        "The quick brown fox",
    ];
    let alone: Vec<String> = prompts.iter().map(|p| cli_greedy(&qwen, p, 12)).collect();
    let concurrent: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, prompt)| {
            let (base, agent) = (s.base.clone(), s.agent.clone());
            let body = json!({"model": qwen, "prompt": prompt, "max_tokens": 12,
                              "temperature": 0})
            .to_string();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(3 * i as u64));
                let mut r = agent
                    .post(format!("{base}/v1/completions"))
                    .header("Content-Type", "application/json")
                    .header("Authorization", "Bearer s3cret")
                    .send(body)
                    .unwrap();
                let v: Value =
                    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                v["choices"][0]["text"].as_str().unwrap().to_string()
            })
        })
        .collect();
    for (c, want) in concurrent.into_iter().zip(&alone) {
        assert_eq!(&c.join().unwrap(), want);
    }

    // Chat: the template renders the prompt; the greedy reply is generate's on that prompt.
    let (status, reply) = s.post_json(
        "/v1/chat/completions",
        json!({"model": chat, "messages": [{"role": "user", "content": "Hi"}],
               "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["object"], "chat.completion");
    assert_eq!(reply["choices"][0]["message"]["role"], "assistant");
    assert_eq!(reply["usage"]["prompt_tokens"].as_u64().unwrap(), {
        // <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n through the tokenizer.
        let tok =
            tokenizers::Tokenizer::from_file(Path::new(&chat).join("tokenizer.json")).unwrap();
        tok.encode(
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .unwrap()
        .len() as u64
    });
    let events = s.stream(
        "/v1/chat/completions",
        json!({"model": chat, "messages": [{"role": "user", "content": "Hi"}],
               "max_tokens": 4, "temperature": 0, "stream": true}),
    );
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(first["object"], "chat.completion.chunk");
    let content: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(
        content,
        reply["choices"][0]["message"]["content"].as_str().unwrap()
    );

    // Every bad request: status, OpenAI's error object, and the server keeps serving.
    let cases: Vec<(&str, String, u16)> = vec![
        ("/v1/embeddings", "{not json".into(), 400),
        (
            "/v1/embeddings",
            json!({"model": bert, "input": 5}).to_string(),
            422,
        ),
        ("/v1/embeddings", json!({"input": "x"}).to_string(), 422),
        (
            "/v1/embeddings",
            json!({"model": "nope", "input": "x"}).to_string(),
            400,
        ),
        (
            "/v1/embeddings",
            json!({"model": qwen, "input": "x"}).to_string(),
            400,
        ),
        (
            "/v1/embeddings",
            json!({"model": bert, "input": []}).to_string(),
            400,
        ),
        (
            "/v1/embeddings",
            json!({"model": bert, "input": "x", "encoding_format": "hex"}).to_string(),
            400,
        ),
        (
            "/v1/completions",
            json!({"model": qwen, "prompt": "x", "n": 2}).to_string(),
            400,
        ),
        (
            "/v1/completions",
            json!({"model": qwen, "prompt": "x", "temperature": 9}).to_string(),
            400,
        ),
        (
            "/v1/completions",
            json!({"model": qwen, "prompt": "x", "max_tokens": 100000}).to_string(),
            400,
        ),
        (
            "/v1/completions",
            json!({"model": qwen, "prompt": "x", "max_tokens": "many"}).to_string(),
            422,
        ),
        (
            "/v1/completions",
            json!({"model": bert, "prompt": "x"}).to_string(),
            400,
        ),
        (
            "/v1/chat/completions",
            json!({"model": qwen, "messages": [{"role": "user", "content": "x"}]}).to_string(),
            400,
        ),
        (
            "/v1/chat/completions",
            json!({"model": raising, "messages": [{"role": "user", "content": "x"}]}).to_string(),
            400,
        ),
        (
            "/v1/chat/completions",
            json!({"model": chat, "messages": []}).to_string(),
            400,
        ),
    ];
    for (path, body, want) in cases {
        let (status, text) = s.post(path, &body);
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{path} {}: not JSON: {text}", &body[..body.len().min(80)]));
        assert_eq!(
            status,
            want,
            "{path} {}: {text}",
            &body[..body.len().min(80)]
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{text}"
        );
        assert!(v["error"]["type"].is_string(), "{text}");
    }
    // Too large: the answer comes while the client is still sending (as curl reads it).
    let big = format!(
        "{{\"model\": \"{bert}\", \"input\": \"{}\"}}",
        "a".repeat(2 << 20)
    );
    let text = post_while_sending(&s.base, "/v1/embeddings", "s3cret", big.into_bytes());
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"request_too_large\""), "{text}");
    let (_, v) = s.post(
        "/v1/chat/completions",
        &json!({"model": raising, "messages": [{"role": "user", "content": "x"}]}).to_string(),
    );
    assert!(v.contains("Conversation roles must alternate"), "{v}");
    let (_, v) = s.post(
        "/v1/chat/completions",
        &json!({"model": qwen, "messages": [{"role": "user", "content": "x"}]}).to_string(),
    );
    assert!(v.contains("no chat template"), "{v}");

    // Metrics, the OpenAPI document and its page.
    let (_, metrics) = s.get("/metrics");
    assert!(
        metrics.contains(
            "ia_requests_total{route=\"/v1/embeddings\",method=\"POST\",status=\"413\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("ia_batch_size_bucket{model="), "{metrics}");
    assert!(
        metrics.contains("ia_time_to_first_token_seconds_count{model="),
        "{metrics}"
    );
    assert!(
        metrics.contains("ia_generated_tokens_total{model="),
        "{metrics}"
    );
    let (_, doc) = s.get("/api-doc/openapi.json");
    let doc: Value = serde_json::from_str(&doc).unwrap();
    for path in [
        "/v1/models",
        "/v1/embeddings",
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/audio/transcriptions",
        "/v1/tasks/run",
        "/health",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["EmbeddingRequest"].is_object());
    let (status, page) = s.get("/docs");
    assert_eq!(status, 200);
    assert!(
        !page.contains("https://") && !page.contains("http://"),
        "nothing from elsewhere"
    );
    // As a person sees it: one block per operation of the document, request schemas shown.
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    let (facts, png) = ia_browser::render_url(
        &format!("{}/docs", s.base),
        1200,
        900,
        "return {routes: document.querySelectorAll('.route').length,
                 details: document.querySelectorAll('details').length,
                 text: document.body.innerText.length};",
    )
    .unwrap();
    assert_eq!(
        facts["routes"].as_u64().unwrap() as usize,
        operations,
        "{facts}"
    );
    assert!(
        facts["details"].as_u64().unwrap() as usize > operations,
        "{facts}"
    );
    assert!(png.len() > 1000);

    // SIGTERM: a clean exit.
    let status = s.stop();
    assert!(status.success(), "{status:?}");
}

#[test]
fn limits_disconnects_websocket_tasks_and_graceful_shutdown() {
    let qwen = fixture("qwen2-tiny");
    let vit = fixture("vit-tiny");
    let whisper = fixture("whisper-tiny");
    let dir = tempfile::tempdir().unwrap();
    let slow = with_long_context(dir.path());
    let models = [qwen.as_str(), &slow, vit.as_str(), whisper.as_str()].join(",");
    let s = Served::start(&["--models", &models, "--max-concurrent-requests", "1"]);

    // A stream holds the one slot: a second request is told 429 while it runs.
    let long = json!({"model": slow, "prompt": "Hello", "max_tokens": LONG_GENERATION, "temperature": 0,
                      "stream": true, "stop_token_ids": []});
    let r = s
        .agent
        .post(format!("{}/v1/completions", s.base))
        .header("Content-Type", "application/json")
        .send(long.to_string())
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut reader = BufReader::new(r.into_body().into_reader());
    let mut first = String::new();
    while !first.starts_with("data: ") {
        first.clear();
        reader.read_line(&mut first).unwrap();
    }
    let (status, text) = s.post_json(
        "/v1/completions",
        json!({"model": qwen, "prompt": "x", "max_tokens": 1}),
    );
    assert_eq!(status, 429, "{text}");
    assert_eq!(text["error"]["type"], "rate_limit_error");
    // The client goes away mid-stream: the slot frees and the server keeps serving.
    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, text) = loop {
        let (status, text) = s.post_json(
            "/v1/completions",
            json!({"model": qwen, "prompt": "x", "max_tokens": 1}),
        );
        if status != 429 || Instant::now() > deadline {
            break (status, text);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, 200, "{text}");
    // The abandoned generation is counted when it stops, which at 8000 tokens/s would take
    // over 12 s had it run to LONG_GENERATION.
    let prefix = format!("ia_generated_tokens_total{{model=\"{slow}\"}} ");
    let deadline = Instant::now() + Duration::from_secs(10);
    let generated: u64 = loop {
        let (_, metrics) = s.get("/metrics");
        let counted = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse().ok());
        if let Some(n) = counted {
            break n;
        }
        assert!(Instant::now() < deadline, "the abandoned generation ran on");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        generated < LONG_GENERATION as u64,
        "the abandoned generation ran on: {generated} tokens"
    );

    // WebSocket: a token message per token, then done; a cancelled one says so.
    let url = s.base.replace("http://", "ws://") + "/ws/generate";
    let (mut ws, _) = tungstenite::connect(&url).unwrap();
    ws.send(tungstenite::Message::text(
        json!({"model": qwen, "prompt": "Hello there", "max_tokens": 6, "temperature": 0,
               "stop_token_ids": []})
        .to_string(),
    ))
    .unwrap();
    let mut tokens = 0;
    let mut text = String::new();
    loop {
        let msg: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
        match msg["type"].as_str().unwrap() {
            "token" => {
                tokens += 1;
                text.push_str(msg["text"].as_str().unwrap());
                assert!(msg["id"].is_u64() && msg["elapsed_ms"].is_f64());
            }
            "done" => {
                assert_eq!(msg["usage"]["completion_tokens"], tokens);
                assert!(msg["time_to_first_token_ms"].as_f64().unwrap() > 0.0);
                break;
            }
            other => panic!("unexpected {other}: {msg}"),
        }
    }
    assert_eq!(text, cli_greedy(&qwen, "Hello there", 6));
    let (mut ws, _) = tungstenite::connect(&url).unwrap();
    ws.send(tungstenite::Message::text(
        json!({"model": slow, "prompt": "Hello", "max_tokens": LONG_GENERATION, "stop_token_ids": []})
            .to_string(),
    ))
    .unwrap();
    let _ = ws.read().unwrap();
    ws.send(tungstenite::Message::text(r#"{"type":"cancel"}"#))
        .unwrap();
    loop {
        let msg: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
        if msg["type"] == "cancelled" {
            break;
        }
        assert_eq!(msg["type"], "token", "{msg}");
    }
    let (mut ws, _) = tungstenite::connect(&url).unwrap();
    ws.send(tungstenite::Message::text(
        r#"{"model": "nope", "prompt": "x"}"#,
    ))
    .unwrap();
    let msg: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(msg["type"], "error");

    // Tasks: an image classified from base64 JSON and from multipart; speech transcribed.
    use base64::Engine as _;
    let png = std::fs::read(fixture("media/photo.png")).unwrap();
    let (status, v) = s.post_json(
        "/v1/tasks/run",
        json!({"model": vit, "image": base64::engine::general_purpose::STANDARD.encode(&png),
               "top_k": 2}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["output"]["labels"].as_array().unwrap().len(), 2);
    let run = bin()
        .args([
            "run",
            "--model",
            &vit,
            "--input",
            &fixture("media/photo.png"),
            "--top-k",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&run.stdout).unwrap();
    let ours = v["result"]["output"]["labels"].as_array().unwrap();
    let theirs = cli
        .pointer("/results/0/result/output/labels")
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(theirs) {
        assert_eq!(a["label"], b["label"], "the server's labels are `run`'s");
        let (x, y) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
        assert!((x - y).abs() < 1e-6, "{x} vs {y}");
    }
    let boundary = "XBOUNDARYX";
    let mut body = Vec::new();
    for (name, value) in [("model", vit.as_str()), ("top_k", "1")] {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes());
    }
    body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.png\"\r\nContent-Type: image/png\r\n\r\n").as_bytes());
    body.extend(&png);
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let multipart = |path: &str, body: &[u8]| {
        let mut r = s
            .agent
            .post(format!("{}{path}", s.base))
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .send(body)
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let (status, text) = multipart("/v1/tasks/run", &body);
    assert_eq!(status, 200, "{text}");
    let wav = std::fs::read(fixture("media/speech-short-16k.wav")).unwrap();
    let mut body = Vec::new();
    body.extend(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{whisper}\r\n"
        )
        .as_bytes(),
    );
    body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n").as_bytes());
    body.extend(&wav);
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let (status, text) = multipart("/v1/audio/transcriptions", &body);
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v["text"].is_string(), "{v}");
    let (status, text) = s.post(
        "/v1/tasks/run",
        &json!({"model": vit, "image": "!!!"}).to_string(),
    );
    assert_eq!(status, 400, "{text}");
    let (status, text) = s.post(
        "/v1/tasks/run",
        &json!({"model": vit, "image": base64::engine::general_purpose::STANDARD.encode(b"not an image")}).to_string(),
    );
    assert_eq!(status, 400, "{text}");

    // Graceful shutdown: a generation in flight finishes after SIGTERM; new ones get 503 or
    // no connection at all.
    let base = s.base.clone();
    let agent = s.agent.clone();
    let body = json!({"model": qwen, "prompt": "Hello", "max_tokens": 100, "temperature": 0,
                      "stop_token_ids": []});
    let in_flight = std::thread::spawn(move || {
        let mut r = agent
            .post(format!("{base}/v1/completions"))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    });
    std::thread::sleep(Duration::from_millis(50));
    let status = s.stop();
    let (code, text) = in_flight.join().unwrap();
    assert_eq!(code, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 100);
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_serve_flags_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-key");
    std::fs::write(&empty, "\n").unwrap();
    let bert = fixture("bert-tiny");
    let twice = format!("{bert},{bert}");
    for (args, says) in [
        (
            vec!["--models", "no-such-model"],
            "unknown model 'no-such-model'",
        ),
        (vec!["--models", twice.as_str()], "listed twice"),
        (
            vec!["--models", bert.as_str(), "--hardware", "webgpu"],
            "does not run in the browser",
        ),
        (
            vec![
                "--models",
                bert.as_str(),
                "--api-key-file",
                empty.to_str().unwrap(),
            ],
            "holds no API key",
        ),
    ] {
        let out = bin().arg("serve").args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
