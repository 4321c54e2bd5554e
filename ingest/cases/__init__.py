"""Cases (案件, work orders): their store, photos, config and the overdue clock."""
