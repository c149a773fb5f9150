"""Knowledge and text sources for the retrieve stage: local (hpo, icd10cm) and network (pubmed, wikipedia)."""
