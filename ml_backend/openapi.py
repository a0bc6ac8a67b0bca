"""The OpenAPI 3 description of the ML backend's routes (served at /openapi.json, used by the fuzz tests)."""

from __future__ import annotations

_ERROR = {
    "description": "bad input",
    "content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}},
}

_TASK = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "data": {
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "labelloop_key": {"type": "string"},
                "reference": {"type": "string"},
            },
        },
    },
}

OPENAPI: dict = {
    "openapi": "3.0.3",
    "info": {
        "title": "labelloop ML backend",
        "version": "1",
        "description": "Label Studio ML-backend protocol: serves the teacher's outputs as pre-annotations.",
    },
    "components": {"securitySchemes": {"basic": {"type": "http", "scheme": "basic"}}},
    "paths": {
        "/health": {
            "get": {
                "summary": "Liveness and the learner's current version",
                "responses": {"200": {"description": "up"}},
            }
        },
        "/setup": {
            "post": {
                "summary": "Label Studio connects a project; answers the model version",
                "security": [{"basic": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "project": {"type": "string"},
                                    "schema": {"type": "string"},
                                    "hostname": {"type": "string"},
                                    "access_token": {"type": "string"},
                                    "extra_params": {},
                                },
                            }
                        }
                    },
                },
                "responses": {"200": {"description": "model version"}, "400": _ERROR, "401": _ERROR},
            }
        },
        "/predict": {
            "post": {
                "summary": "One prediction per task, same order: the teacher's stored output",
                "security": [{"basic": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["tasks"],
                                "properties": {
                                    "tasks": {"type": "array", "items": _TASK, "maxItems": 1000},
                                    "project": {"type": "string"},
                                    "label_config": {"type": "string"},
                                    "params": {"type": "object"},
                                },
                            }
                        }
                    },
                },
                "responses": {"200": {"description": "results"}, "400": _ERROR, "401": _ERROR},
            }
        },
        "/webhook": {
            "post": {
                "summary": "Records a Label Studio event and answers at once",
                "security": [{"basic": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "action": {"type": "string"},
                                    "project": {},
                                    "task": {"type": "object"},
                                    "annotation": {"type": "object"},
                                },
                            }
                        }
                    },
                },
                "responses": {"201": {"description": "recorded"}, "400": _ERROR, "401": _ERROR, "403": _ERROR},
            }
        },
    },
}
