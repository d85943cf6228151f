"""The one route table."""

from __future__ import annotations

from aiohttp import web

from .handlers import (
    admin,
    audit,
    compat,
    dlr,
    endpoints,
    messages,
    ops,
    suppressions,
    usage,
    webhooks,
)


def setup_routes(app: web.Application) -> None:
    """Attach every route to `app`."""
    app.router.add_post("/messages", messages.create_message)
    app.router.add_get("/messages", messages.list_messages, allow_head=False)
    app.router.add_get("/messages/{id}", messages.get_message, allow_head=False)
    app.router.add_post("/messages/{id}/cancel", messages.cancel_one)
    app.router.add_post("/batches/{batch_id}/cancel", messages.cancel_many)
    app.router.add_post("/api/v2/sms/send", compat.send_compat)
    app.router.add_get("/usage", usage.get_usage, allow_head=False)
    app.router.add_get("/admin/usage", usage.get_billing, allow_head=False)
    app.router.add_post("/admin/teams", admin.create_team)
    app.router.add_get("/admin/teams", admin.list_teams, allow_head=False)
    app.router.add_get("/admin/teams/{id}", admin.get_team, allow_head=False)
    app.router.add_patch("/admin/teams/{id}", admin.update_team)
    app.router.add_post("/admin/teams/{id}/webhook-secret", admin.rotate_webhook_secret)
    app.router.add_get("/admin/webhooks", webhooks.list_hooks, allow_head=False)
    app.router.add_post("/admin/webhooks/{id}/retry", webhooks.retry_hook)
    app.router.add_get("/admin/dlr-reports", webhooks.list_dlr_reports, allow_head=False)
    app.router.add_get("/admin/audit", audit.list_audit, allow_head=False)
    app.router.add_get("/suppressions", suppressions.list_own, allow_head=False)
    app.router.add_put("/suppressions/{number}", suppressions.put_own)
    app.router.add_delete("/suppressions/{number}", suppressions.delete_own)
    app.router.add_get("/admin/suppressions", suppressions.list_admin, allow_head=False)
    app.router.add_post("/admin/suppressions/import", suppressions.import_admin)
    app.router.add_put("/admin/suppressions/{number}", suppressions.put_admin)
    app.router.add_delete("/admin/suppressions/{number}", suppressions.delete_admin)
    app.router.add_post("/webhook-endpoints", endpoints.create)
    app.router.add_get("/webhook-endpoints", endpoints.list_all, allow_head=False)
    app.router.add_get("/webhook-endpoints/{id}", endpoints.get_one, allow_head=False)
    app.router.add_patch("/webhook-endpoints/{id}", endpoints.update)
    app.router.add_delete("/webhook-endpoints/{id}", endpoints.delete)
    app.router.add_post("/webhook-endpoints/{id}/rotate-secret", endpoints.rotate)
    app.router.add_post("/webhook-endpoints/{id}/recover", endpoints.recover)
    app.router.add_get("/admin/webhooks/{id}/attempts", webhooks.list_attempts, allow_head=False)
    app.router.add_get("/dlr/{token}", dlr.receive, allow_head=False)
    app.router.add_post("/dlr/{token}", dlr.receive)
    app.router.add_get("/healthz", ops.healthz, allow_head=False)
    app.router.add_get("/readyz", ops.readyz, allow_head=False)
    app.router.add_get("/metrics", ops.metrics, allow_head=False)
    app.router.add_get("/openapi.yaml", ops.openapi, allow_head=False)
