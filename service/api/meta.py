"""Voices, models, health, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from service.api.deps import EngineDep, MetricsDep, require_api_key
from service.api.schemas import Health, ModelInfo, ModelList, Readiness, VoiceInfo, VoiceList
from service.api.voices import aliases_by_voice, model_ids
from service.errors import ApiError, ErrorResponse

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

catalog = APIRouter(dependencies=[Depends(require_api_key)], tags=["catalog"],
                    responses={401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
                               503: {"model": ErrorResponse, "description": "The engine is starting"}})
ops = APIRouter(tags=["operations"])


@catalog.get("/v1/voices", response_model=VoiceList, summary="List voices",
             description="The bundled voices. `aliases` lists the OpenAI voice names mapped onto each voice "
                         "(deterministic: by gender where known, round-robin in id order).")
async def list_voices(engine: EngineDep) -> VoiceList:
    voices = engine.voices()
    aliases = aliases_by_voice(voices)
    return VoiceList(voices=[VoiceInfo(id=v.id, name=v.name, language=v.language, description=v.description,
                                       gender=v.gender, aliases=aliases.get(v.id, [])) for v in voices])


def _models(request: Request, engine) -> list[ModelInfo]:
    created = request.app.state.created
    return [ModelInfo(id=m, created=created) for m in model_ids(engine.model_ids())]


@catalog.get("/v1/models", response_model=ModelList, summary="List models",
             description="OpenAI's list shape. The served model(s), plus the OpenAI model ids accepted as aliases "
                         "(`tts-1`, `tts-1-hd`, `gpt-4o-mini-tts`, ...).")
async def list_models(request: Request, engine: EngineDep) -> ModelList:
    return ModelList(data=_models(request, engine))


@catalog.get("/v1/models/{model_id}", response_model=ModelInfo, summary="Retrieve a model",
             responses={404: {"model": ErrorResponse, "description": "Unknown model"}})
async def get_model(model_id: str, request: Request, engine: EngineDep) -> ModelInfo:
    for model in _models(request, engine):
        if model.id == model_id:
            return model
    raise ApiError(404, f"unknown model {model_id!r}", param="model", code="model_not_found")


@ops.get("/healthz", response_model=Health, summary="Liveness",
         description="200 while the process serves HTTP. Never checks the engine (that is /readyz).")
async def healthz() -> Health:
    return Health(status="ok")


@ops.get("/readyz", response_model=Readiness, summary="Readiness",
         description="200 once the engine is warm and its loop is stepping; 503 before warm-up, while draining, "
                     "or when the engine loop has stalled.",
         responses={503: {"model": Readiness, "description": "Not ready, with the reason"}})
async def readyz(request: Request, metrics: MetricsDep):
    engine = request.app.state.engine
    if engine is None:
        reason = "starting"
    elif engine.draining:
        reason = "draining"
    elif not engine.ready:
        reason = "warming_up_or_stalled"
    else:
        metrics.ready.set(1)
        return Readiness(status="ready")
    metrics.ready.set(0)
    return JSONResponse(Readiness(status="not_ready", reason=reason).model_dump(), status_code=503)


@ops.get("/metrics", summary="Prometheus metrics", response_class=Response,
         responses={200: {"content": {PROMETHEUS_CONTENT_TYPE: {"schema": {"type": "string"}}},
                          "description": "Prometheus text exposition format 0.0.4"}})
def metrics_endpoint(request: Request, metrics: MetricsDep) -> Response:
    engine = request.app.state.engine
    metrics.ready.set(1 if engine is not None and engine.ready else 0)
    return Response(metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)
