//! Hub checkpoints: a save → load round trip is bit-exact, sharded or not, and the bytes
//! written are those transformers wrote.

use std::collections::HashMap;
use std::path::Path;

use crate::common::*;
use safetensors::SafeTensors;
use steermoe::model::{self, Precision, checkpoint};

/// Every tensor of a checkpoint directory: key → (shape, raw bytes).
fn tensors(dir: &Path) -> HashMap<String, (Vec<usize>, Vec<u8>)> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors")
            && !path.ends_with("reference.safetensors")
        {
            let bytes = std::fs::read(&path).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            for (name, view) in st.tensors() {
                out.insert(name, (view.shape().to_vec(), view.data().to_vec()));
            }
        }
    }
    out
}

#[test]
fn save_then_load_is_bit_exact_and_matches_the_hub_files() {
    for (name, dir) in fixtures() {
        let (model, cfg) =
            model::load::<TestBackend>(&dir, &Default::default(), Precision::F32).unwrap();
        let out = tempfile::tempdir().unwrap();
        // Small shards: the fixture splits into several files plus an index.
        checkpoint::save_with_shard_size(&model, &cfg, out.path(), 1_000_000).unwrap();
        assert!(
            out.path().join("model.safetensors.index.json").is_file(),
            "{name}: sharded save has an index"
        );
        let original = tensors(&dir);
        let saved = tensors(out.path());
        assert_eq!(original.len(), saved.len(), "{name}: same tensor count");
        for (key, (shape, bytes)) in &original {
            let (s, b) = saved
                .get(key)
                .unwrap_or_else(|| panic!("{name}: {key} not saved"));
            assert_eq!(s, shape, "{name}: {key} shape");
            assert!(b == bytes, "{name}: {key} bytes differ");
        }
        let (_, cfg2) =
            model::load::<TestBackend>(out.path(), &Default::default(), Precision::F32).unwrap();
        assert_eq!(cfg2.raw, cfg.raw, "{name}: config.json keeps every key");

        // Unsharded.
        let single = tempfile::tempdir().unwrap();
        checkpoint::save(&model, &cfg, single.path()).unwrap();
        assert!(single.path().join("model.safetensors").is_file());
        assert_eq!(tensors(single.path()).len(), original.len());
    }
}
