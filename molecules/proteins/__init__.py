"""Protein backbones as residue frames on SE(3)ᴺ: geometry (frames ↔ atoms, dihedrals), PDB in
and out, fragment data, an invariant-point-attention network, frame flow matching with exact
likelihoods, steric guidance of the sampler and a steric relaxation of samples, and backbone
metrics."""

from geoflow.extras import require_extra

require_extra("molecules.proteins", "proteins", "biotite")

from .data import Fragments, cut_fragments, load_chains, load_fragments, split_at_breaks
from .geometry import (backbone_dihedrals, backbone_from_dihedrals, backbone_from_frames, dihedral,
                       frames_from_backbone, place_atom)
from .metrics import (backbone_metrics, ca_ca_distances, clashes, nearest_rmsd, radius_of_gyration, ramachandran_js,
                      secondary_structure)
from .matching import FrameFlowMatching, rotation_path
from .model import (StericGuidance, backbones_from_points, frame_manifold, frame_prior, frameflow, points_from_backbones,
                    sample_backbones, steric_guided)
from .network import FrameNetwork
from .pdb import read_pdb, write_pdb
from .relax import relax_backbones

__all__ = ["FrameFlowMatching", "FrameNetwork", "StericGuidance", "Fragments", "backbone_dihedrals", "backbone_from_dihedrals",
           "backbone_from_frames", "backbone_metrics", "backbones_from_points", "ca_ca_distances", "clashes",
           "cut_fragments", "dihedral", "frame_manifold", "frame_prior", "frameflow", "frames_from_backbone",
           "load_chains", "load_fragments", "nearest_rmsd", "place_atom", "points_from_backbones", "radius_of_gyration",
           "ramachandran_js", "read_pdb", "relax_backbones", "rotation_path", "sample_backbones", "secondary_structure",
           "split_at_breaks", "steric_guided", "write_pdb"]
