//! The ladder of objectives as a folder of runs, one per rung: `DIR/<objective>` (what
//! `scripts/halo-ladder.sh` and `vigil benchmark ood --train` write, and the benchmark reads).

use std::path::{Path, PathBuf};

use super::Objective;
use crate::train::files;

/// A name that is no objective of the ladder.
#[derive(Debug, thiserror::Error)]
#[error("unknown objective `{name}` (one of std, oe, trades, trades-oe, halo)")]
pub struct UnknownObjective {
    /// The name given.
    pub name: String,
}

/// The objectives `names` names, in ladder order (each once), or the first unknown name.
pub fn objectives(names: &[String]) -> Result<Vec<Objective>, UnknownObjective> {
    if let Some(unknown) = names
        .iter()
        .find(|n| !Objective::ALL.iter().any(|o| o.name() == n.as_str()))
    {
        return Err(UnknownObjective {
            name: unknown.clone(),
        });
    }
    Ok(Objective::ALL
        .into_iter()
        .filter(|o| names.iter().any(|n| n == o.name()))
        .collect())
}

/// The folder of `objective`'s run in the ladder `dir`.
pub fn rung_dir(dir: &Path, objective: Objective) -> PathBuf {
    dir.join(objective.name())
}

/// HALO's helper in the ladder `dir`: the STD rung's latest weights.
pub fn helper(dir: &Path) -> PathBuf {
    rung_dir(dir, Objective::Std).join(files::MODEL)
}

/// The checkpoint to evaluate of each rung of `objectives` that `dir` holds: its
/// `best.safetensors` (lowest validation loss), else its `model.safetensors`. Rungs with
/// neither are left out.
pub fn checkpoints(dir: &Path, objectives: &[Objective]) -> Vec<(Objective, PathBuf)> {
    objectives
        .iter()
        .filter_map(|&objective| {
            let run = rung_dir(dir, objective);
            [files::BEST, files::MODEL]
                .into_iter()
                .map(|name| run.join(name))
                .find(|path| path.is_file())
                .map(|path| (objective, path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives_come_in_ladder_order_and_unknown_names_are_refused() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            objectives(&names(&["halo", "std", "halo"])).unwrap(),
            [Objective::Std, Objective::Halo]
        );
        let err = objectives(&names(&["std", "trade"])).unwrap_err();
        assert_eq!(err.name, "trade");
    }

    #[test]
    fn a_rung_is_evaluated_at_its_best_weights_else_its_latest() {
        let dir = std::env::temp_dir().join(format!("vigil-ladder-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (objective, file) in [
            (Objective::Std, files::MODEL),
            (Objective::Oe, files::BEST),
            (Objective::Oe, files::MODEL),
        ] {
            let run = rung_dir(&dir, objective);
            std::fs::create_dir_all(&run).unwrap();
            std::fs::write(run.join(file), b"weights").unwrap();
        }
        std::fs::create_dir_all(rung_dir(&dir, Objective::Halo)).unwrap();
        let found = checkpoints(&dir, &Objective::ALL);
        assert_eq!(
            found,
            [
                (Objective::Std, dir.join("std").join(files::MODEL)),
                (Objective::Oe, dir.join("oe").join(files::BEST)),
            ]
        );
        assert_eq!(helper(&dir), dir.join("std").join(files::MODEL));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
