"""Task vectors (Hendel, Geva & Globerson 2023) with nnsight."""
