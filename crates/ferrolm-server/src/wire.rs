//! OpenAI's wire types: the request bodies we accept and the responses and stream chunks we
//! send, as our own serde structs. Unknown request fields are ignored (clients send extras);
//! known ones we do not implement are caught in `params`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------
// Requests

/// `stop`: one string or a list.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// `response_format`: `text`, `json_object`, or `json_schema` with its schema.
#[derive(Deserialize, Debug, Clone)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub json_schema: Option<JsonSchemaFormat>,
}

/// `response_format.json_schema`. The schema is always enforced (`strict` or not).
#[derive(Deserialize, Debug, Clone)]
pub struct JsonSchemaFormat {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// A message's content: a string or a list of parts (only text parts are supported).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize, Debug, Clone)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub tool_calls: Option<Value>,
    /// A tool result's call id (`role: tool`).
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// The sampling fields chat and completion requests share.
#[derive(Debug, Clone, Default)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<u32>,
    pub stop: Option<Stop>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<BTreeMap<String, f32>>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub ignore_eos: Option<bool>,
    pub mirostat: Option<u8>,
    pub mirostat_tau: Option<f32>,
    pub mirostat_eta: Option<f32>,
    pub decoding: Option<String>,
    pub penalty_alpha: Option<f32>,
    pub dola_layers: Option<Value>,
    pub speculative: Option<String>,
    pub draft_max: Option<u32>,
}

/// Declares a request struct with the shared sampling fields plus its own, and a
/// `sampling()` accessor (serde's `flatten` would lose the field paths of type errors).
macro_rules! request {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty,)* }) => {
        $(#[$m])*
        #[derive(Deserialize, Debug, Clone)]
        pub struct $name {
            pub model: String,
            $($(#[$fm])* pub $field: $ty,)*
            #[serde(default)] pub temperature: Option<f32>,
            #[serde(default)] pub top_p: Option<f32>,
            #[serde(default)] pub n: Option<u32>,
            #[serde(default)] pub stop: Option<Stop>,
            #[serde(default)] pub seed: Option<i64>,
            #[serde(default)] pub presence_penalty: Option<f32>,
            #[serde(default)] pub frequency_penalty: Option<f32>,
            #[serde(default)] pub logit_bias: Option<BTreeMap<String, f32>>,
            #[serde(default)] pub stream: Option<bool>,
            #[serde(default)] pub stream_options: Option<StreamOptions>,
            #[serde(default)] pub top_k: Option<i64>,
            #[serde(default)] pub min_p: Option<f32>,
            #[serde(default)] pub repetition_penalty: Option<f32>,
            #[serde(default)] pub ignore_eos: Option<bool>,
            #[serde(default)] pub mirostat: Option<u8>,
            #[serde(default)] pub mirostat_tau: Option<f32>,
            #[serde(default)] pub mirostat_eta: Option<f32>,
            #[serde(default)] pub decoding: Option<String>,
            #[serde(default)] pub penalty_alpha: Option<f32>,
            #[serde(default)] pub dola_layers: Option<Value>,
            #[serde(default)] pub speculative: Option<String>,
            #[serde(default)] pub draft_max: Option<u32>,
            #[serde(default)] pub user: Option<String>,
        }

        impl $name {
            pub fn sampling(&self) -> Sampling {
                Sampling {
                    temperature: self.temperature,
                    top_p: self.top_p,
                    n: self.n,
                    stop: self.stop.clone(),
                    seed: self.seed,
                    presence_penalty: self.presence_penalty,
                    frequency_penalty: self.frequency_penalty,
                    logit_bias: self.logit_bias.clone(),
                    stream: self.stream,
                    stream_options: self.stream_options.clone(),
                    top_k: self.top_k,
                    min_p: self.min_p,
                    repetition_penalty: self.repetition_penalty,
                    ignore_eos: self.ignore_eos,
                    mirostat: self.mirostat,
                    mirostat_tau: self.mirostat_tau,
                    mirostat_eta: self.mirostat_eta,
                    decoding: self.decoding.clone(),
                    penalty_alpha: self.penalty_alpha,
                    dola_layers: self.dola_layers.clone(),
                    speculative: self.speculative.clone(),
                    draft_max: self.draft_max,
                }
            }
        }
    };
}

request!(
    /// `POST /v1/chat/completions`.
    ChatRequest {
        messages: Vec<Message>,
        #[serde(default)]
        max_tokens: Option<u64>,
        #[serde(default)]
        max_completion_tokens: Option<u64>,
        #[serde(default)]
        logprobs: Option<bool>,
        #[serde(default)]
        top_logprobs: Option<u32>,
        #[serde(default)]
        response_format: Option<ResponseFormat>,
        #[serde(default)]
        tools: Option<Value>,
        #[serde(default)]
        tool_choice: Option<Value>,
        #[serde(default)]
        functions: Option<Value>,
        #[serde(default)]
        function_call: Option<Value>,
    }
);

/// `prompt` of a completion request: text(s) or token ids.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

request!(
    /// `POST /v1/completions`.
    CompletionRequest {
        prompt: Prompt,
        #[serde(default)]
        max_tokens: Option<u64>,
        #[serde(default)]
        logprobs: Option<u32>,
        #[serde(default)]
        echo: Option<bool>,
        #[serde(default)]
        suffix: Option<String>,
        #[serde(default)]
        best_of: Option<u32>,
        /// An extension (as vLLM's): constrained output for completions too.
        #[serde(default)]
        response_format: Option<ResponseFormat>,
    }
);

/// `input` of an embeddings request.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum EmbedInput {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

/// `POST /v1/embeddings`.
#[derive(Deserialize, Debug, Clone)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: EmbedInput,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<u32>,
    #[serde(default)]
    pub user: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Responses

#[derive(Serialize, Debug, Clone, Default)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Serialize, Debug, Clone)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// One token of `choices[i].logprobs.content` (chat).
#[derive(Serialize, Debug, Clone)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
    pub refusal: Option<()>,
}

#[derive(Serialize, Debug, Clone)]
pub struct AssistantMessage {
    pub role: &'static str,
    /// `null` when the answer is only tool calls.
    pub content: Option<String>,
    pub refusal: Option<()>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// A call the model made (`tool_calls[i]`).
#[derive(Serialize, Debug, Clone)]
pub struct ToolCall {
    /// Position in a streamed delta's list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Serialize, Debug, Clone)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON text (OpenAI's shape).
    pub arguments: String,
}

#[derive(Serialize, Debug, Clone)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'static str,
}

#[derive(Serialize, Debug, Clone)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    pub system_fingerprint: Option<String>,
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

#[derive(Serialize, Debug, Clone)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Serialize, Debug, Clone)]
pub struct ChatChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    /// Present (as `null` until the last chunk) when `stream_options.include_usage` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
    pub system_fingerprint: Option<String>,
}

/// `choices[i].logprobs` of a (legacy) completion.
#[derive(Serialize, Debug, Clone, Default)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    pub text_offset: Vec<usize>,
}

#[derive(Serialize, Debug, Clone)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// A completion, or (with `object: "text_completion"` too, as OpenAI does) a stream chunk.
#[derive(Serialize, Debug, Clone)]
pub struct Completion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
    pub system_fingerprint: Option<String>,
}

#[derive(Serialize, Debug, Clone)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

#[derive(Serialize, Debug, Clone)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

/// An embedding as floats or, with `encoding_format: "base64"`, little-endian f32 bytes.
#[derive(Serialize, Debug, Clone)]
#[serde(untagged)]
pub enum EmbeddingData {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize, Debug, Clone)]
pub struct Embedding {
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingData,
}

#[derive(Serialize, Debug, Clone)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Serialize, Debug, Clone)]
pub struct EmbeddingResponse {
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Serialize, Debug, Clone)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

#[derive(Serialize, Debug, Clone)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}
