"""Settings of the chat service (env ECO2_*)."""

from __future__ import annotations

from pydantic import Field

from eco2.services.bus.settings import EventsSettings


class ChatSettings(EventsSettings):
    chat_model: str = Field(
        "offline", description="answer model: offline, gpt-* (OpenAI), gemini-* (Gemini) or provider/model"
    )
    openai_api_key: str = Field("", description="OpenAI API key (for gpt-* models)")
    openai_base_url: str = Field("", description="OpenAI-compatible base URL (empty = api.openai.com)")
    gemini_api_key: str = Field("", description="Gemini API key (for gemini-* models)")
    gemini_base_url: str = Field("", description="Gemini API base URL (empty = the public endpoint)")
    chat_model_timeout_s: float = Field(60.0, gt=0, description="HTTP timeout of one model call")
    chat_max_message_chars: int = Field(1000, ge=1, le=100_000, description="longest user message accepted")
    chat_workers: int = Field(
        64, ge=0, le=10_000, description="chat jobs run concurrently by this process (0 = API only, workers elsewhere)"
    )
    chat_job_kind: str = Field(
        "chat",
        pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        description="job queue the API enqueues to and the workers claim from (separate stacks on one Valkey)",
    )
    chat_claimers: int = Field(4, ge=1, le=64, description="loops claiming jobs from the queue")
    chat_claim_block_ms: int = Field(500, ge=1, description="how long one claim waits for a job")
    chat_commit_wait_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description="how long a worker that claimed a new job waits for its user message to commit (SendMessage queues the job just before its transaction commits) before failing the attempt",
    )
    chat_history_messages: int = Field(
        40,
        ge=0,
        le=500,
        description="most earlier messages loaded for a turn (those after the summary; past the threshold the older are summarised)",
    )
    chat_summary_threshold_tokens: int = Field(
        0, ge=0, description="history size that triggers summarisation (0 = the model's threshold)"
    )
    chat_tokens_per_event: int = Field(
        4,
        ge=1,
        le=64,
        description="model pieces per TOKEN event, after a first event with the first piece alone (fixed count: deterministic seqs on re-run)",
    )
    chat_input_ttl_s: int = Field(3600, ge=10, description="how long a NEEDS_INPUT question waits for ProvideInput")
    chat_cancel_on_disconnect: bool = Field(
        False,
        description="StreamChat client gone → cancel the job (CANCEL_MODE_INTERRUPT; default: it finishes and is stored)",
    )
    chat_double_text_policy: str = Field(
        "enqueue",
        pattern="^(reject|enqueue|interrupt|rollback)$",
        description="what a message does to its conversation's run in progress when the request leaves double_text_policy unset: reject, enqueue (run after it), interrupt (stop it, keep its answer) or rollback (discard it)",
    )
    chat_cancel_wait_s: float = Field(
        5.0,
        ge=0,
        le=60,
        description="how long CancelRun waits for the run's worker to stop it before answering (the stream's terminal event says when it is done)",
    )
    chat_cancel_poll_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description="how often a worker process also reads PostgreSQL for cancels of its running jobs, in case a cancel signal (Valkey Pub/Sub) was missed (0 = never)",
    )
    chat_queue_wait_s: float = Field(
        120.0,
        ge=0,
        le=3600,
        description="longest a turn waits for the runs sent before it in its conversation (enqueue) before it runs anyway",
    )
    chat_run_stale_s: float = Field(
        900.0,
        ge=10,
        description="a queued or running run not heard of for this long no longer holds its conversation (its job was lost)",
    )
    chat_search_radius_m: int = Field(3000, ge=100, le=50_000, description="radius of nearby searches")
    chat_character_cache_s: float = Field(
        300.0,
        ge=0,
        le=86_400,
        description="how long an answer of CharacterService (the cast, a category's character) is reused (the catalog changes rarely; 0 = every answer asks)",
    )
    chat_places_limit: int = Field(5, ge=1, le=50, description="places shown per answer")
    chat_page_max: int = Field(100, ge=1, le=1000, description="largest page of List/GetConversation")
    chat_stream_timeout_s: float = Field(300.0, gt=0, description="longest StreamChat stream")
    chat_pg_pool_max: int = Field(20, ge=2, description="psycopg connections of the LangGraph checkpointer")
    chat_checkpoint_durability: str = Field(
        "sync", pattern="^(sync|async|exit)$", description="LangGraph durability: sync, async or exit"
    )
    chat_checkpoint_held_s: float = Field(
        60.0, ge=0, description="longest the checkpointer holds back what a turn that stopped left, before storing it"
    )
    chat_checkpoint_held_max: int = Field(
        10_000, ge=0, description="most checkpoints the checkpointer holds back; past it the oldest are stored"
    )
    chat_vision_min_confidence: float = Field(
        0.6, ge=0, le=1, description="below this photo-classification confidence the answer asks the user to confirm"
    )
    chat_image_model: str = Field(
        "",
        description="image-generation model: gpt-image-*/dall-e-* (OpenAI) or gemini-*-image* (Gemini); empty = not configured",
    )
    chat_image_size: str = Field(
        "1024x1024",
        pattern=r"^(auto|[1-9][0-9]{1,3}x[1-9][0-9]{1,3})$",
        description="size of generated images (WIDTHxHEIGHT or auto)",
    )
    chat_image_prompt_max_chars: int = Field(
        800, ge=1, le=4000, description="longest user text sent as an image prompt (cut there)"
    )
    chat_image_max_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="largest generated image stored (ImageService has its own limit)"
    )
    weather_base_url: str = Field(
        "", description="Open-Meteo compatible forecast API base URL (empty = weather not configured)"
    )
    web_search_base_url: str = Field(
        "", description="Tavily compatible search API base URL (empty = web search not configured)"
    )
    web_search_api_key: str = Field("", description="web search API key")
    chat_intent_mode: str = Field(
        "auto",
        pattern="^(rules|model|auto)$",
        description="intent classifier: rules, model (the chat model's structured output, rules on failure) or auto (model when a remote model is configured)",
    )
    chat_intent_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="longest wait for the model's intent decomposition before the rules answer instead",
    )
    chat_bulk_waste_tool_iterations: int = Field(
        5, ge=1, le=20, description="model turns of the bulk_waste tool loop (remote models)"
    )
    bulk_waste_base_url: str = Field(
        "https://api.data.go.kr", description="data.go.kr OpenAPI gateway serving tn_pubr_public_lar_was_fee_api"
    )
    bulk_waste_api_key: str = Field(
        "", description="data.go.kr service key (empty = bulk-waste fee lookup not configured)"
    )
    bulk_waste_timeout_s: float = Field(5.0, gt=0, le=60, description="HTTP timeout of one fee-table request")
    bulk_waste_rows: int = Field(
        1000, ge=1, le=1000, description="numOfRows of one request: a region's whole fee table"
    )
    bulk_waste_max_results: int = Field(5, ge=1, le=50, description="fee rows per item given to the answer")
