"""/api/v1/datasets: upload (validated on arrival), list, get, delete."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import OwnerDep, PageSize, PageToken, SessionDep, SettingsDep, WriteSessionDep
from app.api.responses import example, problems
from app.api.uploads import (
    NAME_FIELD,
    UploadDep,
    is_json,
    json_form,
    parse_form,
    upload_errors,
    upload_openapi,
)
from app.schemas.dataset import DatasetByURL, DatasetForm, DatasetList, DatasetOut
from app.services import dataset_urls, examples
from app.services import datasets as datasets_service
from app.services.paging import DEFAULT_PAGE_SIZE

router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])

ERRORS = problems(401, 404, 422, what="dataset")
UPLOAD_ERRORS = upload_errors(
    "The data failed validation; `errors[0].message` names the array, key or path inside "
    "the zip at fault"
)
UPLOAD_BODY = upload_openapi(
    "An .npz with x, optional y and class_names, or a zip of class folders of PNG/JPEG "
    "images (see docs/datasets.md).",
    fields={
        "name": NAME_FIELD,
        "image_size": {
            "type": "integer",
            "minimum": 8,
            "maximum": 512,
            "description": "Resize every image to this many pixels a side (stretching).",
        },
    },
)
# The other body the route takes: a dataset by reference (docs/datasets.md).
UPLOAD_BODY["requestBody"]["content"]["application/json"] = {
    "schema": DatasetByURL.model_json_schema()
}


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    responses={**UPLOAD_ERRORS, **example(201, examples.DATASET)},
    openapi_extra=UPLOAD_BODY,
    summary="Upload a dataset (.npz or zip of class folders), or register one by URL",
    description="Uploads a dataset as the multipart `file` part: an .npz (`x` images; "
    "optional `y`, integer labels or float regression targets; optional `class_names`) or a "
    "zip of class folders of PNG/JPEG images, told apart by their contents. The file is "
    "checked completely as it arrives, streamed to disk. Answers 201 with the dataset (its "
    "classes, sample shape, dtype, class counts and fixed train/test split sizes) and a "
    "`Location` header. A file that fails a check answers 422 naming the array, key or path "
    "inside the zip at fault, and nothing is stored; 413 over STILLHOUSE_MAX_UPLOAD_BYTES "
    "(or decoding to more than 4 times that); 415 for a body that is not "
    "multipart/form-data; 400 for a malformed one.\n\n"
    "A JSON body instead registers a dataset by reference, not uploaded: "
    '`{"url": "file:///data/pets" or "s3://bucket/prefix", "format": "image_folder" or '
    '"webdataset", "name", "image_size"}`. The URL must lie under one of '
    "STILLHOUSE_DATASET_URL_ROOTS. Its listing is read (classes, counts; a few hundred "
    "images for the channels, size and statistics) without loading it, and training "
    "streams the images from the URL. Answers 201 like an upload, with `url` set; 422 "
    "naming `url` when it cannot be read.",
)
async def create_dataset(up: UploadDep) -> DatasetOut:
    if is_json(up.request):
        body = await json_form(up.request, DatasetByURL)
        row = await up.record(
            lambda: dataset_urls.register_dataset(
                up.session,
                owner=up.owner,
                body=body,
                artifact_dir=up.settings.artifact_dir,
                roots=up.settings.dataset_roots(),
            )
        )
        return datasets_service.dataset_out(row)
    row = await up.store(
        "datasets",
        lambda upload: datasets_service.create_dataset(
            up.session,
            owner=up.owner,
            form=parse_form(DatasetForm, upload.fields),
            path=upload.path,
            filename=upload.filename,
            artifact_dir=up.settings.artifact_dir,
            max_decoded_bytes=up.settings.max_dataset_bytes,
        ),
    )
    return datasets_service.dataset_out(row)


@router.get(
    "",
    response_model=DatasetList,
    responses={
        **ERRORS,
        **example(200, examples.page("datasets", examples.DATASET)),
    },
    summary="List datasets, newest first",
    description="Answers a page of your uploaded datasets, newest first: `page_size` of "
    "them (default 50, at most 500), and `next_page_token` for the next page (null on the "
    "last). A `page_token` this service did not issue answers 422.",
)
def list_datasets(
    owner: OwnerDep,
    session: SessionDep,
    page_size: PageSize = DEFAULT_PAGE_SIZE,
    page_token: PageToken = None,
) -> DatasetList:
    rows, token = datasets_service.list_datasets(
        session, owner=owner, page_size=page_size, page_token=page_token
    )
    return DatasetList(
        datasets=[datasets_service.dataset_out(r) for r in rows], next_page_token=token
    )


@router.get(
    "/{dataset_id:id}",
    response_model=DatasetOut,
    responses={**ERRORS, **example(200, examples.DATASET)},
    summary="Get a dataset",
    description="Answers the dataset as its upload answered it: format, samples, classes, "
    "sample shape, dtype (the scale a model trained on it expects) and `meta` (class counts, "
    "split sizes, per-channel mean and std of the train split). Another owner's dataset "
    "answers 404, exactly like a missing one.",
)
def get_dataset(dataset_id: str, owner: OwnerDep, session: SessionDep) -> DatasetOut:
    return datasets_service.dataset_out(datasets_service.get_owned(session, owner, dataset_id))


@router.delete(
    "/{dataset_id:id}",
    status_code=204,
    responses=problems(
        401,
        404,
        409,
        what="dataset",
        custom={409: "An unfinished job uses it"},
        examples={
            409: examples.conflict(
                f"/api/v1/datasets/{examples.DATASET_ID}",
                f"dataset {examples.DATASET_ID} is used by unfinished job(s) "
                f"{examples.PIPELINE_JOB_ID}; cancel them or wait for them to finish first",
            )
        },
    ),
    summary="Delete a dataset and its stored file",
    description="Deletes the dataset and its stored file; answers 204 with no body. While a "
    "job that has not finished reads it, answers 409 naming the job(s): cancel them or wait "
    "for them to finish first. Jobs that have finished keep their results.",
)
def delete_dataset(
    dataset_id: str, owner: OwnerDep, session: WriteSessionDep, settings: SettingsDep
) -> Response:
    datasets_service.delete_dataset(
        session, owner=owner, dataset_id=dataset_id, artifact_dir=settings.artifact_dir
    )
    return Response(status_code=204)
