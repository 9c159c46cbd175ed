"""/api/v1/datasets: upload (validated on arrival), list, get, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.api.deps import OwnerDep, SessionDep, SettingsDep, WriteSessionDep
from app.api.responses import problems
from app.api.uploads import UploadDep, parse_form, upload_errors, upload_openapi
from app.schemas.dataset import DatasetForm, DatasetList, DatasetOut
from app.services import datasets as datasets_service
from app.services.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

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
        "name": {"type": "string", "maxLength": 200},
        "image_size": {
            "type": "integer",
            "minimum": 8,
            "maximum": 512,
            "description": "Resize every image to this many pixels a side.",
        },
    },
)


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    responses=UPLOAD_ERRORS,
    openapi_extra=UPLOAD_BODY,
    summary="Upload a dataset (.npz or zip of class folders)",
)
async def create_dataset(up: UploadDep) -> DatasetOut:
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


@router.get("", response_model=DatasetList, responses=ERRORS, summary="List datasets, newest first")
def list_datasets(
    owner: OwnerDep,
    session: SessionDep,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    page_token: Annotated[str | None, Query()] = None,
) -> DatasetList:
    rows, token = datasets_service.list_datasets(
        session, owner=owner, page_size=page_size, page_token=page_token
    )
    return DatasetList(
        datasets=[datasets_service.dataset_out(r) for r in rows], next_page_token=token
    )


@router.get("/{dataset_id}", response_model=DatasetOut, responses=ERRORS, summary="Get a dataset")
def get_dataset(dataset_id: str, owner: OwnerDep, session: SessionDep) -> DatasetOut:
    return datasets_service.dataset_out(datasets_service.get_owned(session, owner, dataset_id))


@router.delete(
    "/{dataset_id}",
    status_code=204,
    responses=problems(401, 404, 409, what="dataset", custom={409: "An unfinished job uses it"}),
    summary="Delete a dataset and its stored file",
)
def delete_dataset(
    dataset_id: str, owner: OwnerDep, session: WriteSessionDep, settings: SettingsDep
) -> Response:
    datasets_service.delete_dataset(
        session, owner=owner, dataset_id=dataset_id, artifact_dir=settings.artifact_dir
    )
    return Response(status_code=204)
