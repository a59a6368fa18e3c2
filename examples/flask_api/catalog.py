"""A product catalogue as a JSON API: Flask, served by gunicorn's gevent
workers, storing its documents through a ``gcouchbase`` Bucket.

This module builds the application; where the Bucket comes from is the
business of the two entry points beside it:

* ``per_worker.py``: each worker process opens its own Bucket (in
  gunicorn's ``post_fork`` hook, or lazily on the first request);
* ``preloaded.py``: one Bucket made at import time, in the gunicorn master
  under ``--preload``, before the workers are forked, and then used by every
  worker.

Every request runs in its own greenlet, and all the greenlets of a worker
share its one Bucket (one connection per node, requests pipelined): there
is no connection pool to size.

Endpoints (all JSON):

=========================================  ====================================================
``PUT /products/<id>``                     store a product ``{"name", "category", "price"}``
``GET /products/<id>``                     read it back (404 when absent)
``DELETE /products/<id>``                  remove it (404 when absent)
``POST /batch/upsert``                     ``{"products": {id: product, ...}}``, one round trip
``POST /batch/get``                        ``{"ids": [...]}``: every product, ``null`` if absent
``GET /categories/<category>/products``    N1QL: the products of a category, by id
``GET /categories``                        a view: how many products each category has
``GET /health``                            this process, and the process that opened the bucket
=========================================  ====================================================

The bucket needs the design document :data:`DESIGN_DOC` and a primary N1QL
index; ``python catalog.py prepare`` (or :func:`prepare_bucket`) makes both.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Callable, Dict, Optional

from flask import Flask, jsonify, request

from couchbase_core.exceptions import CouchbaseError, NotFoundError
from couchbase_core.n1ql import CONSISTENCY_REQUEST, N1QLQuery

#: The design document the ``/categories`` endpoint queries.
DESIGN_NAME = "catalog"
DESIGN_DOC = {"views": {"by_category": {
    "map": "function (doc, meta) { if (doc.type == 'product') { emit(doc.category, null); } }",
    "reduce": "_count",
}}}

#: Product ids: letters, digits and ``-_.:``; at most 200 characters.
PRODUCT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")


class BadRequest(Exception):
    """A request the API refuses (answered with 400 and the message)."""


def settings_from_environment() -> Dict[str, Any]:
    """The Bucket's arguments from ``CATALOG_CONNSTR`` (required),
    ``CATALOG_USERNAME`` and ``CATALOG_PASSWORD``."""
    try:
        connstr = os.environ["CATALOG_CONNSTR"]
    except KeyError:
        raise RuntimeError("set CATALOG_CONNSTR to the bucket's connection string, "
                           "e.g. couchbase://127.0.0.1/default") from None
    kwargs: Dict[str, Any] = {"connection_string": connstr}
    if os.environ.get("CATALOG_USERNAME"):
        kwargs["username"] = os.environ["CATALOG_USERNAME"]
        kwargs["password"] = os.environ.get("CATALOG_PASSWORD", "")
    return kwargs


def product_from_json(body: Any) -> Dict[str, Any]:
    """The document stored for a product given as JSON, or :class:`BadRequest`."""
    if not isinstance(body, dict):
        raise BadRequest("a product is a JSON object")
    name, category, price = body.get("name"), body.get("category"), body.get("price")
    if not isinstance(name, str) or not name:
        raise BadRequest("'name' must be a non-empty string")
    if not isinstance(category, str) or not category:
        raise BadRequest("'category' must be a non-empty string")
    if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
        raise BadRequest("'price' must be a number >= 0")
    return {"type": "product", "name": name, "category": category, "price": price}


def checked_id(product_id: Any) -> str:
    """``product_id`` if it is a valid product id, else :class:`BadRequest`."""
    if not isinstance(product_id, str) or not PRODUCT_ID.match(product_id):
        raise BadRequest("bad product id %r" % (product_id,))
    return product_id


def public(doc: Dict[str, Any]) -> Dict[str, Any]:
    """A stored product as the API shows it (without the ``type`` marker)."""
    return {k: v for k, v in doc.items() if k != "type"}


def create_app(get_bucket: Callable[[], Any], bucket_origin: Callable[[], Optional[int]]) -> Flask:
    """The Flask application.

    ``get_bucket()`` returns the (gevent) Bucket to use; it is called on
    every request, so it may open the bucket lazily. ``bucket_origin()``
    returns the id of the process that opened it (shown by ``/health``), or
    ``None`` while it is not open yet."""
    app = Flask("catalog")

    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest) -> Any:
        return jsonify(error=str(exc)), 400

    @app.errorhandler(CouchbaseError)
    def storage_failed(exc: CouchbaseError) -> Any:
        return jsonify(error="storage: %s" % (exc,)), 503

    @app.put("/products/<product_id>")
    def put_product(product_id: str) -> Any:
        doc = product_from_json(request.get_json(silent=True))
        result = get_bucket().upsert(checked_id(product_id), doc)
        return jsonify(id=product_id, cas=result.cas)

    @app.get("/products/<product_id>")
    def get_product(product_id: str) -> Any:
        try:
            result = get_bucket().get(checked_id(product_id))
        except NotFoundError:
            return jsonify(error="no product %s" % product_id), 404
        return jsonify(id=product_id, cas=result.cas, product=public(result.value))

    @app.delete("/products/<product_id>")
    def delete_product(product_id: str) -> Any:
        try:
            get_bucket().remove(checked_id(product_id))
        except NotFoundError:
            return jsonify(error="no product %s" % product_id), 404
        return jsonify(id=product_id, deleted=True)

    @app.post("/batch/upsert")
    def upsert_products() -> Any:
        body = request.get_json(silent=True)
        products = body.get("products") if isinstance(body, dict) else None
        if not isinstance(products, dict) or not products:
            raise BadRequest("expected {\"products\": {id: product, ...}}")
        docs = {checked_id(pid): product_from_json(p) for pid, p in products.items()}
        results = get_bucket().upsert_multi(docs)
        return jsonify(stored=sorted(k for k, r in results.items() if r.success))

    @app.post("/batch/get")
    def get_products() -> Any:
        body = request.get_json(silent=True)
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids:
            raise BadRequest("expected {\"ids\": [id, ...]}")
        results = get_bucket().get_multi([checked_id(i) for i in ids], quiet=True)
        return jsonify(products={k: public(r.value) if r.success else None for k, r in results.items()})

    @app.get("/categories/<category>/products")
    def products_in_category(category: str) -> Any:
        bucket = get_bucket()
        query = N1QLQuery("SELECT META(p).id AS id, p.name, p.category, p.price FROM `%s` p "
                          "WHERE p.type = 'product' AND p.category = $category ORDER BY META(p).id"
                          % bucket.bucket, category=category)
        query.consistency = CONSISTENCY_REQUEST  # see the writes made before this request
        return jsonify(category=category, products=list(bucket.n1ql_query(query)))

    @app.get("/categories")
    def category_counts() -> Any:
        rows = get_bucket().query(DESIGN_NAME, "by_category", group=True, stale=False)
        return jsonify(categories={row.key: row.value for row in rows})

    @app.get("/health")
    def health() -> Any:
        return jsonify(pid=os.getpid(), bucket_opened_by=bucket_origin())

    return app


def prepare_bucket(bucket: Any) -> None:
    """Make what the API needs in ``bucket``: the design document and a
    primary N1QL index (both kept when they already exist)."""
    manager = bucket.bucket_manager()
    manager.design_create(DESIGN_NAME, DESIGN_DOC, use_devmode=False, syncwait=60)
    manager.n1ql_index_create_primary(ignore_exists=True)


def main(argv: Optional[list] = None) -> int:
    """``python catalog.py prepare``: make the design document and the
    primary index in the bucket named by ``CATALOG_CONNSTR``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("command", choices=["prepare"])
    parser.parse_args(argv)
    from couchbase_core.bucket import Bucket

    bucket = Bucket(**settings_from_environment())
    name = bucket.bucket
    try:
        prepare_bucket(bucket)
    finally:
        bucket.close()
    print("prepared %s: design document %r, primary index" % (name, DESIGN_NAME))
    return 0


if __name__ == "__main__":
    sys.exit(main())
