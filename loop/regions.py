"""The label config's names and the result regions labelloop writes, without the Label Studio SDK.

Shared by the client (loop/studio.py, which imports the SDK) and the ML backend's prediction path
(loop/predictions.py, which must not): a draft is the ``response`` TextArea of the ``source`` text;
an annotation adds the ``verdict`` choice and an optional ``comment`` (see label_config/*.xml).
"""

from __future__ import annotations

import secrets

FROM_RESPONSE = "response"
FROM_VERDICT = "verdict"
FROM_COMMENT = "comment"
TO_NAME = "source"


def region_id() -> str:
    """A fresh region id, in the form the labeling UI gives one."""
    return secrets.token_urlsafe(8)[:10]


def prediction_result(draft: str) -> list[dict]:
    """The pre-annotation: the response TextArea filled with the draft."""
    return [{"from_name": FROM_RESPONSE, "to_name": TO_NAME, "type": "textarea", "value": {"text": [draft]}}]


def annotation_result(verdict: str, text: str, comment: str | None = None, *, from_prediction: bool) -> list[dict]:
    """The regions of an annotation as the labeling UI writes them: the (possibly edited) response,
    started from the prediction when there is one, the verdict choice and an optional comment."""
    def region(from_name: str, kind: str, origin: str, value: dict) -> dict:
        return {"id": region_id(), "from_name": from_name, "to_name": TO_NAME, "type": kind, "origin": origin,
                "value": value}

    result = [region(FROM_RESPONSE, "textarea", "prediction" if from_prediction else "manual", {"text": [text]}),
              region(FROM_VERDICT, "choices", "manual", {"choices": [verdict]})]
    if comment:
        result.append(region(FROM_COMMENT, "textarea", "manual", {"text": [comment]}))
    return result


SUBGROUP_VIEW = (
    '<View style="margin: 0.5em 0"><Header value="Group the text is about" size="6"/>'
    '<Text name="subgroup" value="$subgroup"/></View>'
)


def with_subgroup(label_config: str) -> str:
    """The label config with the task's subgroup(s) shown under the source text (studio.show_subgroup):
    annotators judge a counter-narrative better when they know whom the hateful text targets."""
    if 'name="subgroup"' in label_config:
        return label_config
    at = label_config.find(f'name="{TO_NAME}"')
    end = label_config.find(">", at) if at >= 0 else -1
    if end < 0:
        raise ValueError(f"the label config has no element named {TO_NAME!r} to show the subgroup under")
    return label_config[: end + 1] + "\n  " + SUBGROUP_VIEW + label_config[end + 1 :]
