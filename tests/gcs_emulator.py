"""`python tests/gcs_emulator.py start --host 127.0.0.1 --port N ...`: gcp-storage-emulator with one fix.

Its media downloads carry no x-goog-generation header. tensorstore (orbax's array reads and OCDBT manifests)
takes an object's generation from that header, reads 0 without it, and then refuses its own cache
revalidation ("Malformed StorageGeneration"). Real GCS sends the header
(https://cloud.google.com/storage/docs/xml-api/reference-headers#xgooggeneration); this adds it.
"""
import sys

from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # noqa: BLE001 - not found: the original handler answered 404
        return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])


objects.download = download  # before the server module builds its routes from it

if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main

    main(sys.argv[1:])
