"""Structured output end to end (docs/structured_output.md): the official OpenAI client against
asl-gateway and asl-server on the default model. Every constrained reply is checked against its
constraint by an independent validator (jsonschema, Python's re), never against our own parser."""
import json
import re

import jsonschema
import openai
import pydantic
import pytest

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 24},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
        "employed": {"type": "boolean"},
    },
    "required": ["name", "age", "city", "employed"],
}
PEOPLE = ["a retired sailor from Lisbon", "a young violinist", "a baker in Osaka", "a nurse who loves hiking",
          "a chess champion", "a farmer from Kansas", "a student of physics", "a painter in Paris",
          "a taxi driver in Cairo", "an astronaut", "a librarian", "a surfer from Sydney", "a chef in Lima",
          "a teacher in Oslo", "a firefighter", "a beekeeper", "a poet from Dublin", "a pilot", "a potter",
          "a marathon runner"]


def _person_format(name="person"):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": PERSON, "strict": True}}


def test_json_schema_replies_validate_on_twenty_prompts(client, model):
    for i, who in enumerate(PEOPLE):
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"Describe {who} as JSON."}],
            response_format=_person_format(), temperature=0.8, seed=i, max_tokens=300)
        choice = r.choices[0]
        assert choice.finish_reason == "stop", (who, choice)
        jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_the_official_clients_parse_helper(client, model):
    """client.chat.completions.parse: the SDK sends the strict schema of a pydantic model and parses
    the reply into it."""
    class City(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=30)
        country: str = pydantic.Field(max_length=30)
        population: int

    r = client.chat.completions.parse(model=model, messages=[{"role": "user", "content": "Name a big city."}],
                                      response_format=City, temperature=0, max_tokens=200)
    city = r.choices[0].message.parsed
    assert isinstance(city, City) and city.name, r


def test_streamed_constrained_reply_equals_the_unary_one(client, model):
    # Without the prefix cache: the second request would hit the first's blocks, and a hit computes
    # only the suffix rows, which may differ in the last bits (docs/architecture.md, "Prefix cache").
    kwargs = dict(model=model, messages=[{"role": "user", "content": "Describe a pirate."}],
                  response_format=_person_format(), temperature=0, max_tokens=300,
                  extra_body={"cache_prompt": False})
    unary = client.chat.completions.create(**kwargs).choices[0].message.content
    text = "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(stream=True, **kwargs)
                   if ch.choices)
    assert text == unary
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_mode(client, model):
    for seed in range(3):
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Give me a JSON object about cats."}],
            response_format={"type": "json_object"}, temperature=1.0, seed=seed, max_tokens=400)
        if r.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(r.choices[0].message.content), dict)
        else:  # cut by max_tokens: still a prefix of an object
            assert r.choices[0].message.content.startswith("{")


def test_regex_choice_and_grammar_on_both_endpoints(client, model):
    r = client.completions.create(model=model, prompt="My phone number is", max_tokens=30, temperature=1.0, seed=3,
                                  extra_body={"structured_outputs": {"regex": r" \(\d{3}\) \d{3}-\d{4}"}})
    assert re.fullmatch(r" \(\d{3}\) \d{3}-\d{4}", r.choices[0].text), r.choices[0].text
    assert r.choices[0].finish_reason == "stop"
    answers = ["positive", "negative", "neutral"]
    for seed in range(3):
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Sentiment of 'I love this!'?"}], temperature=1.0,
            seed=seed, max_tokens=10, extra_body={"structured_outputs": {"choice": answers}})
        assert r.choices[0].message.content in answers
    # vLLM's older field name and an EBNF grammar: a comma-separated list of small numbers.
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Count to five."}], temperature=0, max_tokens=40,
        extra_body={"guided_grammar": 'root ::= num ("," num)*\nnum ::= [1-9] [0-9]?'})
    assert re.fullmatch(r"[1-9][0-9]?(,[1-9][0-9]?)*", r.choices[0].message.content), r.choices[0].message.content


def test_a_complete_grammar_ends_the_reply_even_with_ignore_eos(client, model):
    r = client.completions.create(model=model, prompt="The answer is", max_tokens=50, temperature=0,
                                  extra_body={"ignore_eos": True, "structured_outputs": {"choice": [" yes", " no"]}})
    assert r.choices[0].text in (" yes", " no") and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 50


def test_n_choices_each_follow_the_schema(client, model):
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Describe a person."}], n=3,
        response_format=_person_format(), temperature=1.0, seed=7, max_tokens=300)
    assert len(r.choices) == 3
    for c in r.choices:
        jsonschema.validate(json.loads(c.message.content), PERSON)


@pytest.mark.parametrize("kwargs, param", [
    (dict(response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "integer", "minimum": 5, "maximum": 1}}}), "response_format"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}),
     "response_format"),
    (dict(extra_body={"structured_outputs": {"regex": "(ab"}}), "structured_outputs.regex"),
    (dict(extra_body={"structured_outputs": {"grammar": "root ::= missing"}}), "structured_outputs.grammar"),
    (dict(extra_body={"structured_outputs": {"regex": "a", "choice": ["b"]}}), "structured_outputs.choice"),
    (dict(response_format={"type": "yaml"}), "response_format.type"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_constraints_are_400_naming_the_field(client, model, kwargs, param, stream):
    with pytest.raises(openai.BadRequestError) as e:
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                           stream=stream, **kwargs)
        if stream:
            list(r)
    assert e.value.body["param"] == param, e.value.body
    assert e.value.body["message"].startswith(param + ": "), e.value.body


def test_a_bad_constraint_loses_nothing(client, model):
    """The server keeps serving: a bad spec fails one request, the next constrained one works."""
    for _ in range(3):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                           extra_body={"guided_regex": "[z-a]"})
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                       temperature=0, extra_body={"guided_regex": "[a-z]{3}"})
    assert re.fullmatch("[a-z]{3}", r.choices[0].message.content)
