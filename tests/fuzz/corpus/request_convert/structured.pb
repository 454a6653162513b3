x:z
{"type": "integer"}