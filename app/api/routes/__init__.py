"""The routes. Importing this package registers the `id` path convertor the routes use.

`{job_id:id}` matches an id without `/` or `:`, so that `/api/v1/jobs/<id>:cancel` is the
cancel route alone, not also `GET /api/v1/jobs/{job_id}` with an id of "<id>:cancel":
a 405 there then lists exactly the methods of the path the request meant.
"""

from starlette.convertors import Convertor, register_url_convertor


class IdConvertor(Convertor[str]):
    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("id", IdConvertor())
