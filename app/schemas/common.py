"""Field descriptions that several bodies share, worded once."""

from __future__ import annotations

# Every list answer's token (app/services/paging.py issues them).
NEXT_PAGE_TOKEN = (
    "Pass as `page_token` to get the next page; null on the last page. Opaque: only tokens "
    "this service issued are accepted."
)
# An upload's name (app/schemas/names.py: display_name).
UPLOAD_NAME = (
    "The `name` form field, else the uploaded file's name without its folders; null when "
    "neither was given."
)
