"""The embeddable core: registry, scheduler, zygote supervisor, cgroups. No HTTP."""
