"""HTTP API of the procedure service (the system of record)."""

from __future__ import annotations

from fastapi import APIRouter

from services.procedure.api import bulk, console, eos, history, maintenances, procedures

router = APIRouter()
router.include_router(procedures.router)
router.include_router(eos.router)
router.include_router(bulk.router)
router.include_router(history.router)
router.include_router(console.router)
router.include_router(maintenances.router)

__all__ = ["router"]
