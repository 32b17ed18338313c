#include "adapters/sandbox/cohort_generator.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <ostream>
#include <sstream>
#include <stdexcept>

#include <Poco/SHA1Engine.h>
#include <Poco/UUID.h>
#include <Poco/UUIDGenerator.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "fhir/datetime.hpp"
#include "mappings/json_writer.hpp"

namespace calcalert::sandbox {
namespace {

// ---------------------------------------------------------------------------------------------
// Random numbers: splitmix64 and our own mapping to ranges, identical on every platform.

std::uint64_t mix64(std::uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

class Rng {
public:
    explicit Rng(std::uint64_t state) : state_(state) {}
    std::uint64_t next() {
        state_ += 0x9E3779B97F4A7C15ULL;
        return mix64(state_);
    }
    // Uniform in [0, n) for n > 0: draws below 2^64 mod n are rejected, so there is no modulo bias.
    std::uint64_t below(std::uint64_t n) {
        const std::uint64_t reject_below = (0 - n) % n;
        for (;;) {
            const std::uint64_t r = next();
            if (r >= reject_below) return r % n;
        }
    }
    // Uniform integer in [lo, hi].
    std::int64_t between(std::int64_t lo, std::int64_t hi) {
        return lo + static_cast<std::int64_t>(below(static_cast<std::uint64_t>(hi - lo) + 1));
    }
    bool chance(unsigned percent) { return below(100) < percent; }
    template <class T>
    const T& pick(const std::vector<T>& v) {
        return v[static_cast<std::size_t>(below(v.size()))];
    }

private:
    std::uint64_t state_;
};

// The generator of one patient: a function of (seed, index) only.
std::uint64_t patient_stream(std::uint64_t seed, std::size_t index) {
    return mix64(mix64(seed ^ 0x5A17C0DE5EEDULL) + mix64(static_cast<std::uint64_t>(index) + 0x51ED270B27ULL));
}
std::uint64_t deck_stream(std::uint64_t seed, std::size_t block) {
    return mix64(mix64(seed ^ 0xDECCA11ULL) ^ mix64(static_cast<std::uint64_t>(block) * 0x2545F4914F6CDD1DULL + 1));
}

constexpr EpochSeconds kMinute = 60;
constexpr EpochSeconds kHour = 3600;
constexpr EpochSeconds kDay = 86400;

// ---------------------------------------------------------------------------------------------
// Terminology used by the generator. Mapped codes come from mappings/data/lab-codes.tsv and
// condition-codes.tsv; the unmapped ones (vitals, other labs, other conditions) are there so that
// filtering matters.

constexpr const char* kLoinc = "http://loinc.org";
constexpr const char* kUcum = "http://unitsofmeasure.org";
constexpr const char* kSct = "http://snomed.info/sct";
constexpr const char* kIcd10 = "http://hl7.org/fhir/sid/icd-10-cm";
constexpr const char* kIcd9 = "http://hl7.org/fhir/sid/icd-9-cm";
constexpr const char* kIcd9Alt = "http://terminology.hl7.org/CodeSystem/icd9cm";

struct Loinc {
    const char* code;
    const char* display;
    const char* text;
};

const Loinc kCaMass{"17861-6", "Calcium [Mass/volume] in Serum or Plasma", "Calcium"};
const Loinc kCaBlood{"49765-1", "Calcium [Mass/volume] in Blood", "Calcium, blood"};
const Loinc kCaMoles{"2000-8", "Calcium [Moles/volume] in Serum or Plasma", "Calcium"};
const Loinc kCaCorrected{"29265-6", "Calcium [Moles/volume] corrected for albumin in Serum or Plasma",
                         "Calcium, albumin-corrected"};
const Loinc kIonSerum{"1995-0", "Calcium.ionized [Moles/volume] in Serum or Plasma", "Ionized calcium"};
const Loinc kIonBlood{"1994-3", "Calcium.ionized [Moles/volume] in Blood", "Ionized calcium, blood"};
const Loinc kIonIse{"47596-2", "Calcium.ionized [Moles/volume] in Blood by Ion-selective membrane electrode (ISE)",
                    "Ionized calcium (ISE)"};
const Loinc kIonMass{"17863-2", "Calcium.ionized [Mass/volume] in Serum or Plasma", "Ionized calcium"};
const Loinc kIonPh{"59473-9", "Calcium.ionized [Mass/volume] adjusted to pH 7.4 in Venous blood by ISE",
                   "Ionized calcium, pH-adjusted"};
const Loinc kPMass{"2777-1", "Phosphate [Mass/volume] in Serum or Plasma", "Phosphate"};
const Loinc kPMoles{"14879-1", "Phosphate [Moles/volume] in Serum or Plasma", "Phosphate"};
const Loinc kPthMass{"2731-8", "Parathyrin.intact [Mass/volume] in Serum or Plasma", "PTH, intact"};
const Loinc kPthMoles{"14866-8", "Parathyrin.intact [Moles/volume] in Serum or Plasma", "PTH, intact"};
const Loinc kAlbumin{"1751-7", "Albumin [Mass/volume] in Serum or Plasma", "Albumin"};
const Loinc kAlp{"6768-6", "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma",
                 "Alkaline phosphatase"};
const Loinc kEgfrSynthea{"33914-3",
                         "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum or Plasma by "
                         "Creatinine-based formula (MDRD)",
                         "eGFR (MDRD)"};
const std::vector<Loinc> kEgfrCodes = {
    {"98979-8",
     "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by Creatinine-based "
     "formula (CKD-EPI 2021)",
     "eGFR (CKD-EPI 2021)"},
    {"98979-8",
     "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by Creatinine-based "
     "formula (CKD-EPI 2021)",
     "eGFR (CKD-EPI 2021)"},
    {"62238-1",
     "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by Creatinine-based "
     "formula (CKD-EPI)",
     "eGFR (CKD-EPI)"},
    {"98980-6",
     "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by Creatinine and "
     "Cystatin C-based formula (CKD-EPI 2021)",
     "eGFR (creatinine + cystatin C, CKD-EPI 2021)"},
    {"48642-3",
     "Glomerular filtration rate/1.73 sq M.predicted among non-blacks [Volume Rate/Area] in Serum, Plasma or Blood by "
     "Creatinine-based formula (MDRD)",
     "eGFR (MDRD, non-black)"},
    {"48643-1",
     "Glomerular filtration rate/1.73 sq M.predicted among blacks [Volume Rate/Area] in Serum, Plasma or Blood by "
     "Creatinine-based formula (MDRD)",
     "eGFR (MDRD, black)"},
    {"50044-7",
     "Glomerular filtration rate/1.73 sq M.predicted among females [Volume Rate/Area] in Serum, Plasma or Blood by "
     "Creatinine-based formula (MDRD)",
     "eGFR (MDRD, female)"},
    {"70969-1",
     "Glomerular filtration rate/1.73 sq M.predicted among males [Volume Rate/Area] in Serum, Plasma or Blood by "
     "Creatinine-based formula (MDRD)",
     "eGFR (MDRD, male)"},
    {"77147-7",
     "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by Creatinine-based "
     "formula (MDRD)",
     "eGFR (MDRD)"},
    {"88293-6",
     "Glomerular filtration rate/1.73 sq M.predicted among blacks [Volume Rate/Area] in Serum, Plasma or Blood by "
     "Creatinine-based formula (CKD-EPI)",
     "eGFR (CKD-EPI, black)"},
    {"88294-4",
     "Glomerular filtration rate/1.73 sq M.predicted among non-blacks [Volume Rate/Area] in Serum, Plasma or Blood by "
     "Creatinine-based formula (CKD-EPI)",
     "eGFR (CKD-EPI, non-black)"},
    {"94677-2",
     "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by Creatinine and "
     "Cystatin C-based formula (CKD-EPI)",
     "eGFR (creatinine + cystatin C, CKD-EPI)"},
    {"50210-4",
     "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by Cystatin C-based "
     "formula",
     "eGFR (cystatin C)"},
    {"69405-9", "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood", "eGFR"},
    kEgfrSynthea,
};

// Not read by the rules.
const Loinc kWeight{"29463-7", "Body weight", "Body weight"};
const Loinc kHeight{"8302-2", "Body height", "Body height"};
const Loinc kBmi{"39156-5", "Body mass index (BMI) [Ratio]", "BMI"};
const Loinc kHeartRate{"8867-4", "Heart rate", "Heart rate"};
const Loinc kBpPanel{"85354-9", "Blood pressure panel with all children optional", "Blood pressure"};
const Loinc kSystolic{"8480-6", "Systolic blood pressure", "Systolic blood pressure"};
const Loinc kDiastolic{"8462-4", "Diastolic blood pressure", "Diastolic blood pressure"};
const Loinc kHemoglobin{"718-7", "Hemoglobin [Mass/volume] in Blood", "Hemoglobin"};
const Loinc kGlucose{"2345-7", "Glucose [Mass/volume] in Serum or Plasma", "Glucose"};
const Loinc kSodium{"2951-2", "Sodium [Moles/volume] in Serum or Plasma", "Sodium"};
const Loinc kPotassium{"2823-3", "Potassium [Moles/volume] in Serum or Plasma", "Potassium"};
const Loinc kCreatinine{"2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "Creatinine"};

enum class Dx {
    // mapped (condition-codes.tsv)
    esrd,
    calciphylaxis,
    calcinosis_cutis,
    tumoral_calcinosis,
    skin_ulcer,
    skin_necrosis,
    gangrene,
    livedo_reticularis,
    skin_nodule,
    sepsis,
    dermatomyositis,
    juvenile_dermatomyositis,
    systemic_sclerosis,
    mctd,
    hyperparathyroidism,
    hypercalcemia,
    hyperphosphatemia,
    vasculitis,
    panniculitis,
    primary_hyperoxaluria,
    protein_c_deficiency,
    protein_s_deficiency,
    protein_c_or_s_deficiency,
    // not mapped
    hypertension,
    diabetes_type_2,
    hyperlipidemia,
    asthma,
    gerd,
    depression,
    osteoarthritis_knee,
    ckd_stage_3,
    ckd_stage_4,
    esrd_with_transplant,  // SCT 236436003: excluded from ESRD (terminology.md decision 8)
    kidney_transplant_status,
    phosphorus_disorder_other,   // E83.39: too broad for hyperphosphatemia (decision 15)
    atherosclerosis_with_ulcer,  // ICD-9 440.23: a skin ulcer, never calciphylaxis (decision 10)
};

enum class Sys { sct, icd10, icd9 };

struct DxCode {
    Dx dx;
    Sys sys;
    const char* code;
    const char* display;
    const char* text = nullptr;  // Condition.code.text when the clinician's words differ from the display
};

const std::vector<DxCode> kDxCodes = {
    {Dx::esrd, Sys::sct, "46177005", "End-stage renal disease"},
    {Dx::esrd, Sys::sct, "236435004", "End stage renal failure on dialysis"},
    {Dx::esrd, Sys::sct, "236434000", "End stage renal failure untreated by renal replacement therapy"},
    {Dx::esrd, Sys::sct, "433146000", "Chronic kidney disease stage 5"},
    {Dx::esrd, Sys::sct, "714152005", "Chronic kidney disease stage 5 on dialysis"},
    {Dx::esrd, Sys::sct, "428982002", "Dependence on hemodialysis due to end stage renal disease"},
    {Dx::esrd, Sys::icd10, "N18.5", "Chronic kidney disease, stage 5"},
    {Dx::esrd, Sys::icd10, "N18.6", "End stage renal disease"},
    {Dx::esrd, Sys::icd10, "Z99.2", "Dependence on renal dialysis"},
    {Dx::esrd, Sys::icd10, "I12.0",
     "Hypertensive chronic kidney disease with stage 5 chronic kidney disease or end stage renal disease"},
    {Dx::esrd, Sys::icd10, "I13.11",
     "Hypertensive heart and chronic kidney disease without heart failure, with stage 5 chronic kidney disease, or "
     "end stage renal disease"},
    {Dx::esrd, Sys::icd10, "I13.2",
     "Hypertensive heart and chronic kidney disease with heart failure and with stage 5 chronic kidney disease, or end "
     "stage renal disease"},
    {Dx::esrd, Sys::icd9, "585.5", "Chronic kidney disease, Stage V"},
    {Dx::esrd, Sys::icd9, "585.6", "End stage renal disease"},
    {Dx::esrd, Sys::icd9, "V45.11", "Renal dialysis status"},
    // E83.59 counts as calciphylaxis only by its words (clinical-rules.md §5.3.2): the record says so in code.text.
    {Dx::calciphylaxis, Sys::icd10, "E83.59", "Other disorders of calcium metabolism", "Calciphylaxis"},
    {Dx::calciphylaxis, Sys::sct, "237900002", "Calciphylaxis"},
    {Dx::calcinosis_cutis, Sys::icd10, "L94.2", "Calcinosis cutis"},
    {Dx::calcinosis_cutis, Sys::icd9, "709.3", "Degenerative skin disorders"},
    {Dx::tumoral_calcinosis, Sys::icd9, "275.49", "Other disorders of calcium metabolism"},
    {Dx::skin_ulcer, Sys::sct, "46742003", "Skin ulcer"},
    {Dx::skin_ulcer, Sys::sct, "19429009", "Chronic ulcer of skin"},
    {Dx::skin_ulcer, Sys::icd10, "L97.909",
     "Non-pressure chronic ulcer of unspecified part of unspecified lower leg with unspecified severity"},
    {Dx::skin_ulcer, Sys::icd10, "L97.519",
     "Non-pressure chronic ulcer of other part of right foot with unspecified severity"},
    {Dx::skin_ulcer, Sys::icd10, "L97.429",
     "Non-pressure chronic ulcer of left heel and midfoot with unspecified severity"},
    {Dx::skin_ulcer, Sys::icd10, "L98.419", "Non-pressure chronic ulcer of buttock with unspecified severity"},
    {Dx::skin_ulcer, Sys::icd10, "L98.499",
     "Non-pressure chronic ulcer of skin of other sites with unspecified severity"},
    {Dx::skin_ulcer, Sys::icd9, "707.10", "Ulcer of lower limb, unspecified"},
    {Dx::skin_ulcer, Sys::icd9, "707.8", "Chronic ulcer of other specified sites"},
    {Dx::skin_ulcer, Sys::icd9, "707.9", "Chronic ulcer of unspecified site"},
    {Dx::skin_necrosis, Sys::sct, "95347000", "Skin necrosis"},
    {Dx::gangrene, Sys::icd10, "I96", "Gangrene, not elsewhere classified"},
    {Dx::gangrene, Sys::icd10, "I73.01", "Raynaud's syndrome with gangrene"},
    {Dx::gangrene, Sys::sct, "195303005", "Gangrene of foot"},
    {Dx::gangrene, Sys::sct, "49176002", "Arteriosclerotic gangrene"},
    {Dx::gangrene, Sys::icd9, "440.24", "Atherosclerosis of native arteries of the extremities with gangrene"},
    {Dx::gangrene, Sys::icd9, "785.4", "Gangrene"},
    {Dx::livedo_reticularis, Sys::sct, "238772004", "Livedo reticularis"},
    {Dx::skin_nodule, Sys::sct, "95319004", "Skin nodule"},
    {Dx::skin_nodule, Sys::sct, "95325000", "Subcutaneous nodule"},
    {Dx::sepsis, Sys::icd10, "A41.9", "Sepsis, unspecified organism"},
    {Dx::sepsis, Sys::icd10, "A41.89", "Other specified sepsis"},
    {Dx::sepsis, Sys::icd10, "R65.20", "Severe sepsis without septic shock"},
    {Dx::sepsis, Sys::icd10, "R65.21", "Severe sepsis with septic shock"},
    {Dx::sepsis, Sys::sct, "91302008", "Sepsis"},
    {Dx::sepsis, Sys::sct, "76571007", "Septic shock"},
    {Dx::dermatomyositis, Sys::sct, "396230008", "Dermatomyositis"},
    {Dx::dermatomyositis, Sys::icd10, "M33.10", "Other dermatomyositis, organ involvement unspecified"},
    {Dx::dermatomyositis, Sys::icd10, "M33.12", "Other dermatomyositis with myopathy"},
    {Dx::dermatomyositis, Sys::icd10, "M33.90", "Dermatopolymyositis, unspecified, organ involvement unspecified"},
    {Dx::dermatomyositis, Sys::icd9, "710.3", "Dermatomyositis"},
    {Dx::juvenile_dermatomyositis, Sys::sct, "1212005", "Juvenile dermatomyositis"},
    {Dx::juvenile_dermatomyositis, Sys::sct, "311671000119100",
     "Juvenile dermatomyositis co-occurrent with respiratory involvement"},
    {Dx::juvenile_dermatomyositis, Sys::icd10, "M33.00", "Juvenile dermatomyositis, organ involvement unspecified"},
    {Dx::juvenile_dermatomyositis, Sys::icd10, "M33.09", "Juvenile dermatomyositis with other organ involvement"},
    {Dx::systemic_sclerosis, Sys::sct, "89155008", "Systemic sclerosis"},
    {Dx::systemic_sclerosis, Sys::sct, "62382002", "CREST syndrome"},
    {Dx::systemic_sclerosis, Sys::sct, "128459005", "Limited cutaneous systemic sclerosis"},
    {Dx::systemic_sclerosis, Sys::sct, "128460000", "Diffuse cutaneous systemic sclerosis"},
    {Dx::systemic_sclerosis, Sys::icd10, "M34.0", "Progressive systemic sclerosis"},
    {Dx::systemic_sclerosis, Sys::icd10, "M34.1", "CR(E)ST syndrome"},
    {Dx::systemic_sclerosis, Sys::icd10, "M34.81", "Systemic sclerosis with lung involvement"},
    {Dx::systemic_sclerosis, Sys::icd10, "M34.9", "Systemic sclerosis, unspecified"},
    {Dx::systemic_sclerosis, Sys::icd9, "710.1", "Systemic sclerosis"},
    {Dx::mctd, Sys::icd10, "M35.1", "Other overlap syndromes"},
    {Dx::hyperparathyroidism, Sys::icd10, "N25.81", "Secondary hyperparathyroidism of renal origin"},
    {Dx::hyperparathyroidism, Sys::icd10, "E21.1", "Secondary hyperparathyroidism, not elsewhere classified"},
    {Dx::hyperparathyroidism, Sys::icd10, "E21.3", "Hyperparathyroidism, unspecified"},
    {Dx::hyperparathyroidism, Sys::sct, "91478007", "Secondary hyperparathyroidism"},
    {Dx::hyperparathyroidism, Sys::sct, "19034001", "Hyperparathyroidism due to renal insufficiency"},
    {Dx::hyperparathyroidism, Sys::sct, "66999008", "Hyperparathyroidism"},
    {Dx::hyperparathyroidism, Sys::icd9, "588.81", "Secondary hyperparathyroidism (of renal origin)"},
    {Dx::hyperparathyroidism, Sys::icd9, "252.00", "Hyperparathyroidism, unspecified"},
    {Dx::hypercalcemia, Sys::icd10, "E83.52", "Hypercalcemia"},
    {Dx::hypercalcemia, Sys::sct, "66931009", "Hypercalcemia"},
    {Dx::hypercalcemia, Sys::icd9, "275.42", "Hypercalcemia"},
    {Dx::hyperphosphatemia, Sys::sct, "20165001", "Hyperphosphatemia"},
    {Dx::vasculitis, Sys::sct, "31996006", "Vasculitis"},
    {Dx::vasculitis, Sys::icd10, "I77.82", "Antineutrophilic cytoplasmic antibody [ANCA] vasculitis"},
    {Dx::vasculitis, Sys::icd10, "M31.7", "Microscopic polyangiitis"},
    {Dx::vasculitis, Sys::icd10, "L95.9", "Vasculitis limited to the skin, unspecified"},
    {Dx::panniculitis, Sys::icd10, "M79.3", "Panniculitis, unspecified"},
    {Dx::panniculitis, Sys::sct, "22125009", "Panniculitis"},
    {Dx::primary_hyperoxaluria, Sys::icd10, "E72.53", "Primary hyperoxaluria"},
    {Dx::primary_hyperoxaluria, Sys::sct, "65520001", "Primary hyperoxaluria type 1"},
    {Dx::protein_c_deficiency, Sys::sct, "76407009", "Protein C deficiency disease"},
    {Dx::protein_s_deficiency, Sys::sct, "1563006", "Protein S deficiency disease"},
    {Dx::protein_c_or_s_deficiency, Sys::icd10, "D68.59", "Other primary thrombophilia"},
    {Dx::hypertension, Sys::icd10, "I10", "Essential (primary) hypertension"},
    {Dx::hypertension, Sys::sct, "38341003", "Hypertensive disorder, systemic arterial"},
    {Dx::diabetes_type_2, Sys::icd10, "E11.9", "Type 2 diabetes mellitus without complications"},
    {Dx::diabetes_type_2, Sys::sct, "44054006", "Diabetes mellitus type 2"},
    {Dx::hyperlipidemia, Sys::icd10, "E78.5", "Hyperlipidemia, unspecified"},
    {Dx::hyperlipidemia, Sys::sct, "55822004", "Hyperlipidemia"},
    {Dx::asthma, Sys::icd10, "J45.909", "Unspecified asthma, uncomplicated"},
    {Dx::asthma, Sys::sct, "195967001", "Asthma"},
    {Dx::gerd, Sys::icd10, "K21.9", "Gastro-esophageal reflux disease without esophagitis"},
    {Dx::gerd, Sys::sct, "235595009", "Gastroesophageal reflux disease"},
    {Dx::depression, Sys::icd10, "F32.9", "Major depressive disorder, single episode, unspecified"},
    {Dx::depression, Sys::sct, "35489007", "Depressive disorder"},
    {Dx::osteoarthritis_knee, Sys::icd10, "M17.9", "Osteoarthritis of knee, unspecified"},
    {Dx::osteoarthritis_knee, Sys::sct, "239873007", "Osteoarthritis of knee"},
    {Dx::ckd_stage_3, Sys::icd10, "N18.30", "Chronic kidney disease, stage 3 unspecified"},
    {Dx::ckd_stage_3, Sys::sct, "433144002", "Chronic kidney disease stage 3"},
    {Dx::ckd_stage_4, Sys::icd10, "N18.4", "Chronic kidney disease, stage 4 (severe)"},
    {Dx::ckd_stage_4, Sys::sct, "431857002", "Chronic kidney disease stage 4"},
    {Dx::esrd_with_transplant, Sys::sct, "236436003", "End stage renal failure with renal transplant"},
    {Dx::kidney_transplant_status, Sys::icd10, "Z94.0", "Kidney transplant status"},
    {Dx::phosphorus_disorder_other, Sys::icd10, "E83.39", "Other disorders of phosphorus metabolism"},
    {Dx::atherosclerosis_with_ulcer, Sys::icd9, "440.23",
     "Atherosclerosis of native arteries of the extremities with ulceration"},
};

// ---------------------------------------------------------------------------------------------
// Value bands. Each band lists the conventional range and the SI range (converted with the factors
// of mappings/data/units.tsv) so that every draw of an archetype, in either unit, lands on the same
// side of every threshold of rules/catalog/facts.json:
//   calcium total mg/dL; mmol/L x 4.008; default high 10.5
//   phosphate mg/dL; mmol/L x 3.097; default high 4.5;  Ca x P > 70 (strict)
//   PTH pg/mL (= ng/L); pmol/L x 9.43; default high 65
//   albumin g/dL; g/L / 10; corrected calcium = Ca + 0.8 x (4.0 - albumin) when albumin < 4.0
//   ionized calcium mmol/L; mg/dL / 4.008; high 1.32
// Products, worst case over both units: CaHighNormal x PVeryHigh >= 9.6 x 7.5 = 72.0;
// CaHigh x PWithHighCa >= 11.0 x 6.6 = 72.6; CaNormal x PHigh <= 9.82 x 6.50 = 63.9;
// CaHighNormal x PNormal <= 10.4 x 4.2 = 43.7; CaHigh x PNormal <= 12.42 x 4.2 = 52.2.

struct Band {
    double lo, hi;        // conventional unit
    double si_lo, si_hi;  // SI unit
};

constexpr Band kCaNormal{8.6, 9.8, 2.15, 2.45};
constexpr Band kCaHighNormal{9.6, 10.4, 2.40, 2.59};
constexpr Band kCaHigh{11.0, 12.4, 2.75, 3.10};
constexpr Band kCaForCorrection{10.0, 10.4, 2.50, 2.59};  // + 0.8 x (4.0 - albumin <= 3.0) >= 10.8
constexpr Band kCaUpperNormal{10.2, 10.4, 2.55, 2.59};
constexpr Band kCorrectedCaHigh{10.9, 11.8, 2.72, 2.95};
constexpr Band kPNormal{2.8, 4.2, 0.90, 1.35};
constexpr Band kPHigh{5.0, 6.5, 1.62, 2.10};
constexpr Band kPVeryHigh{7.5, 9.0, 2.43, 2.90};
constexpr Band kPWithHighCa{6.6, 7.2, 2.14, 2.32};
constexpr Band kPJustAboveNarrowRange{4.2, 4.4, 1.36, 1.42};  // above a reference high of 4.0 mg/dL
constexpr Band kPPediatric{5.0, 5.8, 1.62, 1.87};             // below a pediatric reference high of 6.5 mg/dL
constexpr Band kPthNormal{15, 60, 1.6, 6.3};
constexpr Band kPthHigh{150, 1200, 16.0, 127.0};
// Above 9 x the upper reference limit (the dialysis target range, KDIGO 2017; default 585 pg/mL; with the
// printed reference high 65 pg/mL = 6.9 pmol/L at most 585.6 pg/mL), and within it (above 65, below 585).
constexpr Band kPthAboveDialysisRange{650, 1500, 69.0, 159.0};
constexpr Band kPthWithinDialysisRange{150, 540, 16.0, 57.0};
constexpr Band kPthMildlyHigh{70, 140, 7.5, 14.8};
constexpr Band kAlbNormal{4.0, 4.8, 40, 48};
constexpr Band kAlbLow{2.5, 3.0, 25, 30};
constexpr Band kIonNormal{4.5, 5.2, 1.12, 1.30};  // conventional = mg/dL, SI = mmol/L
constexpr Band kIonHigh{5.7, 6.4, 1.40, 1.60};

// Reference ranges as labs print them (low, high), conventional and SI.
constexpr Band kCaRef{8.5, 10.5, 2.12, 2.62};
constexpr Band kPRef{2.5, 4.5, 0.81, 1.45};
constexpr Band kPRefNarrow{2.5, 4.0, 0.81, 1.29};
constexpr Band kPRefPediatric{4.0, 6.5, 1.29, 2.10};
constexpr Band kPRefWide{2.5, 7.5, 0.81, 2.42};
constexpr Band kPthRef{15, 65, 1.6, 6.9};
constexpr Band kAlbRef{3.5, 5.0, 35, 50};
constexpr Band kIonRef{4.6, 5.3, 1.15, 1.32};

enum class Units { any, conventional, si };
enum class Renal { normal, ckd3, ckd4, esrd };

// ---------------------------------------------------------------------------------------------
// JSON helpers.

using Writer = mappings::JsonWriter;

using mappings::kv;
using mappings::str;
void coding(Writer& w, std::string_view system, std::string_view code, std::string_view display) {
    w.StartObject();
    kv(w, "system", system);
    kv(w, "code", code);
    if (!display.empty()) kv(w, "display", display);
    w.EndObject();
}
void codeable(Writer& w, const char* key, std::string_view system, std::string_view code, std::string_view display) {
    w.Key(key);
    w.StartObject();
    w.Key("coding");
    w.StartArray();
    coding(w, system, code, display);
    w.EndArray();
    w.EndObject();
}

std::string date_only(EpochSeconds t) {
    return fhir::format_datetime(t).substr(0, 10);
}

struct Quantity {
    double value = 0;
    int decimals = 1;
    std::string unit;
    std::string comparator;
};

void write_number(Writer& w, double v, int decimals) {
    if (decimals <= 0)
        w.Int64(std::llround(v));
    else
        w.Double(v);
}

void quantity(Writer& w, const char* key, const Quantity& q) {
    w.Key(key);
    w.StartObject();
    w.Key("value");
    write_number(w, q.value, q.decimals);
    if (!q.comparator.empty()) kv(w, "comparator", q.comparator);
    kv(w, "unit", q.unit);
    kv(w, "system", kUcum);
    kv(w, "code", q.unit);
    w.EndObject();
}

// ---------------------------------------------------------------------------------------------
// The resources of one patient, as plain data until they are rendered.

struct Observation {
    std::string suffix;
    const char* category = "laboratory";
    Loinc code{};
    std::optional<Quantity> value;
    std::vector<std::pair<Loinc, Quantity>> components;
    EpochSeconds effective = 0;
    bool as_period = false;
    std::string status = "final";
    std::optional<double> ref_low, ref_high;
    std::string ref_unit;
    int ref_decimals = 1;
    std::optional<EpochSeconds> issued;
};

struct Condition {
    std::string suffix;
    std::vector<DxCode> codings;
    bool strip_dot = false;
    const char* icd9_system = kIcd9;
    std::string clinical;      // "" = absent
    std::string verification;  // "" = absent
    std::string category = "problem-list-item";
    EpochSeconds onset = 0;
    std::optional<EpochSeconds> abatement;
    EpochSeconds recorded = 0;
};

const char* system_uri(Sys s, const char* icd9_system) {
    switch (s) {
        case Sys::sct: return kSct;
        case Sys::icd10: return kIcd10;
        case Sys::icd9: return icd9_system;
    }
    return kSct;
}

std::string without_dot(std::string code) {
    code.erase(std::remove(code.begin(), code.end(), '.'), code.end());
    return code;
}

const char* category_display(std::string_view c) {
    if (c == "laboratory") return "Laboratory";
    if (c == "vital-signs") return "Vital Signs";
    if (c == "encounter-diagnosis") return "Encounter Diagnosis";
    return "Problem List Item";
}

std::string render_observation(const Observation& o, const std::string& id, const std::string& subject) {
    rapidjson::StringBuffer sb;
    Writer w(sb);
    w.StartObject();
    kv(w, "resourceType", "Observation");
    kv(w, "id", id);
    kv(w, "status", o.status);
    w.Key("category");
    w.StartArray();
    w.StartObject();
    w.Key("coding");
    w.StartArray();
    coding(w, "http://terminology.hl7.org/CodeSystem/observation-category", o.category, category_display(o.category));
    w.EndArray();
    w.EndObject();
    w.EndArray();
    w.Key("code");
    w.StartObject();
    w.Key("coding");
    w.StartArray();
    coding(w, kLoinc, o.code.code, o.code.display);
    w.EndArray();
    kv(w, "text", o.code.text);
    w.EndObject();
    w.Key("subject");
    w.StartObject();
    kv(w, "reference", subject);
    w.EndObject();
    if (o.as_period) {
        w.Key("effectivePeriod");
        w.StartObject();
        kv(w, "start", fhir::format_datetime(o.effective));
        kv(w, "end", fhir::format_datetime(o.effective + 10 * kMinute));
        w.EndObject();
    } else {
        kv(w, "effectiveDateTime", fhir::format_datetime(o.effective));
    }
    if (o.issued) kv(w, "issued", fhir::format_datetime(*o.issued));
    if (o.value) quantity(w, "valueQuantity", *o.value);
    if (o.ref_low || o.ref_high) {
        w.Key("referenceRange");
        w.StartArray();
        w.StartObject();
        if (o.ref_low) quantity(w, "low", Quantity{*o.ref_low, o.ref_decimals, o.ref_unit, ""});
        if (o.ref_high) quantity(w, "high", Quantity{*o.ref_high, o.ref_decimals, o.ref_unit, ""});
        w.EndObject();
        w.EndArray();
    }
    if (!o.components.empty()) {
        w.Key("component");
        w.StartArray();
        for (const auto& [code, q] : o.components) {
            w.StartObject();
            w.Key("code");
            w.StartObject();
            w.Key("coding");
            w.StartArray();
            coding(w, kLoinc, code.code, code.display);
            w.EndArray();
            kv(w, "text", code.text);
            w.EndObject();
            quantity(w, "valueQuantity", q);
            w.EndObject();
        }
        w.EndArray();
    }
    w.EndObject();
    return sb.GetString();
}

std::string render_condition(const Condition& c, const std::string& id, const std::string& subject) {
    rapidjson::StringBuffer sb;
    Writer w(sb);
    w.StartObject();
    kv(w, "resourceType", "Condition");
    kv(w, "id", id);
    if (!c.clinical.empty())
        codeable(w, "clinicalStatus", "http://terminology.hl7.org/CodeSystem/condition-clinical", c.clinical, "");
    if (!c.verification.empty())
        codeable(w, "verificationStatus", "http://terminology.hl7.org/CodeSystem/condition-ver-status", c.verification,
                 "");
    w.Key("category");
    w.StartArray();
    w.StartObject();
    w.Key("coding");
    w.StartArray();
    coding(w, "http://terminology.hl7.org/CodeSystem/condition-category", c.category, category_display(c.category));
    w.EndArray();
    w.EndObject();
    w.EndArray();
    w.Key("code");
    w.StartObject();
    w.Key("coding");
    w.StartArray();
    for (const auto& d : c.codings) {
        const std::string code = d.sys == Sys::icd10 && c.strip_dot ? without_dot(d.code) : std::string(d.code);
        coding(w, system_uri(d.sys, c.icd9_system), code, d.display);
    }
    w.EndArray();
    kv(w, "text", c.codings.front().text ? c.codings.front().text : c.codings.front().display);
    w.EndObject();
    w.Key("subject");
    w.StartObject();
    kv(w, "reference", subject);
    w.EndObject();
    kv(w, "onsetDateTime", date_only(c.onset));
    if (c.abatement) kv(w, "abatementDateTime", date_only(*c.abatement));
    kv(w, "recordedDate", fhir::format_datetime(c.recorded));
    w.EndObject();
    return sb.GetString();
}

// ---------------------------------------------------------------------------------------------
// Names.

struct Given {
    const char* name;
    const char* gender;
};
const std::vector<Given> kGiven = {
    {"Harold", "male"},   {"Lorna", "female"},  {"Wei", "male"},       {"Emre", "male"},    {"Marta", "female"},
    {"Ingrid", "female"}, {"Samuel", "male"},   {"Amara", "female"},   {"Kenji", "male"},   {"Rosa", "female"},
    {"Dmitri", "male"},   {"Fatima", "female"}, {"Oliver", "male"},    {"Priya", "female"}, {"Tomasz", "male"},
    {"Grace", "female"},  {"Mateo", "male"},    {"Leila", "female"},   {"Arjun", "male"},   {"Hannah", "female"},
    {"Kwame", "male"},    {"Sofia", "female"},  {"Lars", "male"},      {"Mei", "female"},   {"Diego", "male"},
    {"Aisha", "female"},  {"Patrick", "male"},  {"Yuki", "female"},    {"Ibrahim", "male"}, {"Elena", "female"},
    {"Noah", "male"},     {"Chloe", "female"},  {"Ravi", "male"},      {"Nadia", "female"}, {"Felix", "male"},
    {"Olga", "female"},   {"Jamal", "male"},    {"Beatriz", "female"}, {"Henrik", "male"},  {"Zanele", "female"},
};
const std::vector<const char*> kFamily = {
    "Abernathy", "Bauer",    "Castillo",  "Dubois", "Eriksen",  "Fischer",   "Garcia", "Hashimoto", "Ivanova",
    "Jensen",    "Kowalski", "Lindqvist", "Moreau", "Nakamura", "Okafor",    "Petrov", "Quinn",     "Rossi",
    "Schmidt",   "Tanaka",   "Ueda",      "Varga",  "Walsh",    "Xu",        "Yilmaz", "Zielinski", "Acheampong",
    "Brennan",   "Costa",    "Delgado",   "Engel",  "Farah",    "Gallagher", "Horvat", "Iyer",      "Jovanovic",
    "Kim",       "Larsen",   "Mbeki",     "Novak",  "O'Brien",  "Pereira",   "Reyes",  "Sato",      "Thompson",
    "Umarov",    "Vance",    "Whitaker",  "Young",  "Zhang",
};

// ---------------------------------------------------------------------------------------------
// Building one patient.

const char* const kRandomStatus = "*";

struct LabOpts {
    Units units = Units::any;
    std::string status = kRandomStatus;  // "*": final, amended or corrected at random
    int ref = -1;                        // -1: the usual reference range at random; 0: none; 1: always
    const Band* custom_ref = nullptr;    // this reference range instead of the usual one (always written)
    std::string comparator;
    const Loinc* code = nullptr;  // this code instead of a random one of the unit
};

struct CondOpts {
    std::optional<Sys> sys;                    // a code of this system (any when absent)
    bool strip_dot = false;                    // ICD-10-CM without the dot (random when sys is absent)
    std::string clinical = kRandomStatus;      // "*": active, recurrence or relapse, or absent
    std::string verification = kRandomStatus;  // "*": confirmed mostly, sometimes provisional, ...
    bool abated = false;                       // an abatementDateTime before now
    int max_years = 8;                         // onset up to this many years ago
};

class Builder {
public:
    Builder(std::uint64_t stream, EpochSeconds now_time, std::string pid)
        : rng(stream), now(now_time), pid_(std::move(pid)) {
        const Given& g = rng.pick(kGiven);
        given_ = g.name;
        gender_ = g.gender;
        family_ = rng.pick(kFamily);
    }

    Rng rng;
    const EpochSeconds now;
    Renal renal = Renal::normal;

    std::string name() const { return given_ + " " + family_; }
    void child() { min_age_ = 6, max_age_ = 16; }
    bool is_child() const { return max_age_ < 18; }

    // A time `lo`..`hi` days before now, on a whole minute.
    EpochSeconds days_ago(double lo, double hi) {
        const auto a = static_cast<std::int64_t>(std::llround(lo * 1440));
        const auto b = static_cast<std::int64_t>(std::llround(hi * 1440));
        return now - rng.between(a, b) * kMinute;
    }
    EpochSeconds recent() { return days_ago(1, 45); }

    Quantity draw(double lo, double hi, int decimals, const std::string& unit) {
        double scale = 1;
        for (int i = 0; i < decimals; ++i) scale *= 10;
        const auto a = static_cast<std::int64_t>(std::llround(lo * scale));
        const auto b = static_cast<std::int64_t>(std::llround(hi * scale));
        return Quantity{static_cast<double>(rng.between(a, b)) / scale, decimals, unit, ""};
    }

    std::string random_status() {
        const auto r = rng.below(100);
        return r < 86 ? "final" : r < 93 ? "amended" : "corrected";
    }

    Observation& add_observation(std::string suffix, const char* category, const Loinc& code, EpochSeconds t,
                                 const std::string& status) {
        Observation o;
        o.suffix = std::move(suffix);
        o.category = category;
        o.code = code;
        o.effective = t;
        o.status = status == kRandomStatus ? random_status() : status;
        o.as_period = std::string_view(category) == "laboratory" && rng.chance(6);
        if (std::string_view(category) == "laboratory" && rng.chance(60)) {
            const EpochSeconds issued = t + rng.between(30, 360) * kMinute;
            if (issued <= now || t > now) o.issued = issued;
        }
        observations_.push_back(std::move(o));
        return observations_.back();
    }

    // One lab result of a mapped analyte. The unit decides the code (mass or moles) unless given.
    struct UnitSpec {
        const char* unit;
        int decimals;
        std::vector<const Loinc*> codes;
    };
    void measure(const char* suffix, const UnitSpec& conv, const UnitSpec& si, unsigned si_percent, const Band& band,
                 const Band* usual_ref, EpochSeconds t, const LabOpts& o, const char* conv_alt_unit = nullptr) {
        const bool use_si = o.units == Units::si || (o.units == Units::any && rng.chance(si_percent));
        const UnitSpec& u = use_si ? si : conv;
        std::string unit = u.unit;
        if (!use_si && conv_alt_unit && rng.chance(30)) unit = conv_alt_unit;
        const Loinc& code = o.code ? *o.code : *u.codes[static_cast<std::size_t>(rng.below(u.codes.size()))];
        Quantity q = use_si ? draw(band.si_lo, band.si_hi, u.decimals, unit) : draw(band.lo, band.hi, u.decimals, unit);
        q.comparator = o.comparator;
        Observation& obs = add_observation(suffix, "laboratory", code, t, o.status);
        obs.value = q;
        const Band* ref = o.custom_ref                                      ? o.custom_ref
                          : (o.ref == 1 || (o.ref == -1 && rng.chance(35))) ? usual_ref
                                                                            : nullptr;
        if (ref) {
            obs.ref_low = use_si ? ref->si_lo : ref->lo;
            obs.ref_high = use_si ? ref->si_hi : ref->hi;
            obs.ref_unit = unit;
            obs.ref_decimals = u.decimals;
        }
    }

    void calcium(const Band& b, EpochSeconds t, const LabOpts& o = {}) {
        static const UnitSpec conv{"mg/dL", 1, {&kCaMass, &kCaMass, &kCaMass, &kCaMass, &kCaMass, &kCaBlood}};
        static const UnitSpec si{"mmol/L", 2, {&kCaMoles}};
        measure("ca", conv, si, 30, b, &kCaRef, t, o);
    }
    void corrected_calcium(const Band& b, EpochSeconds t, const LabOpts& o = {}) {
        static const UnitSpec conv{"mg/dL", 1, {&kCaCorrected}};
        static const UnitSpec si{"mmol/L", 2, {&kCaCorrected}};
        measure("ca-corr", conv, si, 80, b, &kCaRef, t, o);
    }
    void ionized_calcium(const Band& b, EpochSeconds t, const LabOpts& o = {}) {
        static const UnitSpec conv{"mg/dL", 1, {&kIonMass, &kIonPh}};
        static const UnitSpec si{"mmol/L", 2, {&kIonSerum, &kIonBlood, &kIonIse}};
        measure("ica", conv, si, 70, b, &kIonRef, t, o);
    }
    void phosphate(const Band& b, EpochSeconds t, const LabOpts& o = {}) {
        static const UnitSpec conv{"mg/dL", 1, {&kPMass}};
        static const UnitSpec si{"mmol/L", 2, {&kPMoles}};
        measure("phos", conv, si, 30, b, &kPRef, t, o);
    }
    void pth(const Band& b, EpochSeconds t, const LabOpts& o = {}) {
        static const UnitSpec conv{"pg/mL", 0, {&kPthMass}};
        static const UnitSpec si{"pmol/L", 1, {&kPthMoles}};
        measure("pth", conv, si, 25, b, &kPthRef, t, o, "ng/L");
    }
    void albumin(const Band& b, EpochSeconds t, const LabOpts& o = {}) {
        static const UnitSpec conv{"g/dL", 1, {&kAlbumin}};
        static const UnitSpec si{"g/L", 0, {&kAlbumin}};
        measure("alb", conv, si, 35, b, &kAlbRef, t, o);
    }
    void egfr(int lo, int hi, EpochSeconds t, const LabOpts& o = {}) {
        const Loinc& code = rng.pick(kEgfrCodes);
        // Synthea writes mL/min under 33914-3 (terminology.md decision 7).
        const bool synthea_unit = std::string_view(code.code) == "33914-3" && rng.chance(50);
        Observation& obs = add_observation("egfr", "laboratory", code, t, o.status);
        obs.value = draw(lo, hi, 0, synthea_unit ? "mL/min" : "mL/min/{1.73_m2}");
        if (!synthea_unit && rng.chance(30)) {
            obs.ref_low = 60;
            obs.ref_unit = "mL/min/{1.73_m2}";
            obs.ref_decimals = 0;
        }
    }
    void creatinine(double lo, double hi, EpochSeconds t) {
        const Quantity q = draw(lo, hi, 1, "mg/dL");
        result("creat", "laboratory", kCreatinine, t, q);
    }
    // A result of a code the rules do not read.
    void result(const char* suffix, const char* category, const Loinc& code, EpochSeconds t, const Quantity& q) {
        add_observation(suffix, category, code, t, "final").value = q;
    }

    // A condition of the concept; the coding system, status and category drawn unless given.
    void dx(Dx concept_id, const CondOpts& o = {}) {
        std::vector<const DxCode*> all, of_system;
        for (const auto& c : kDxCodes)
            if (c.dx == concept_id) {
                all.push_back(&c);
                if (o.sys && c.sys == *o.sys) of_system.push_back(&c);
            }
        if (all.empty()) throw std::logic_error("cohort generator: no code for a condition concept");
        const auto& pool = o.sys && !of_system.empty() ? of_system : all;
        Condition c;
        const DxCode& first = *pool[static_cast<std::size_t>(rng.below(pool.size()))];
        c.codings.push_back(first);
        // Many records carry SNOMED CT and ICD-10-CM side by side.
        if (first.sys == Sys::sct && !o.sys && rng.chance(25))
            for (const DxCode* other : all)
                if (other->sys == Sys::icd10) {
                    c.codings.push_back(*other);
                    break;
                }
        c.suffix = "cond";
        c.strip_dot = o.sys ? o.strip_dot : rng.chance(30);
        c.icd9_system = rng.chance(50) ? kIcd9 : kIcd9Alt;
        c.category = rng.chance(15) ? "encounter-diagnosis" : "problem-list-item";
        if (o.clinical == kRandomStatus) {
            const auto r = rng.below(100);
            if (c.category == "encounter-diagnosis" && r < 30 && !o.abated)
                c.clinical = "";  // counts: no clinicalStatus and no abatement (§1.1)
            else
                c.clinical = r < 90 ? "active" : r < 95 ? "recurrence" : "relapse";
        } else {
            c.clinical = o.clinical;
        }
        if (o.verification == kRandomStatus) {
            const auto r = rng.below(100);
            c.verification = r < 85 ? "confirmed" : r < 90 ? "provisional" : r < 95 ? "unconfirmed" : "differential";
        } else {
            c.verification = o.verification;
        }
        const int max_days = std::max(60, (is_child() ? 3 : o.max_years) * 365);
        c.onset = days_ago(40, max_days);
        c.onset -= c.onset % kDay;  // a date
        if (o.abated) c.abatement = now - rng.between(2, std::max<std::int64_t>(3, (now - c.onset) / kDay - 1)) * kDay;
        const EpochSeconds recorded_day = c.onset + rng.between(0, 30) * kDay;
        c.recorded = std::min(now - kHour, recorded_day + rng.between(8 * 60, 17 * 60) * kMinute);
        conditions_.push_back(std::move(c));
    }

    void vitals_and_background();

    SyntheticPatient finish(std::size_t index, const std::string& archetype,
                            const std::vector<std::string_view>& expected) {
        SyntheticPatient p;
        p.index = index;
        p.id = pid_;
        p.name = name();
        p.archetype = archetype;
        for (auto e : expected) p.expected.emplace_back(e);
        std::sort(p.expected.begin(), p.expected.end());
        const std::string subject = "Patient/" + pid_;
        p.resources.push_back({"Patient", pid_, render_patient()});
        int n = 0;
        for (const auto& o : observations_) {
            const std::string id = pid_ + "-" + o.suffix + "-" + std::to_string(++n);
            p.resources.push_back({"Observation", id, render_observation(o, id, subject)});
        }
        for (const auto& c : conditions_) {
            const std::string id = pid_ + "-" + c.suffix + "-" + std::to_string(++n);
            p.resources.push_back({"Condition", id, render_condition(c, id, subject)});
        }
        return p;
    }

private:
    std::string render_patient() {
        const auto age_days =
            rng.between(static_cast<std::int64_t>(min_age_) * 365, static_cast<std::int64_t>(max_age_) * 365 + 364);
        rapidjson::StringBuffer sb;
        Writer w(sb);
        w.StartObject();
        kv(w, "resourceType", "Patient");
        kv(w, "id", pid_);
        w.Key("meta");
        w.StartObject();
        w.Key("tag");
        w.StartArray();
        coding(w, "urn:calcalert:sandbox", "synthetic", "calcalert synthetic cohort");
        w.EndArray();
        w.EndObject();
        w.Key("identifier");
        w.StartArray();
        w.StartObject();
        kv(w, "system", "urn:calcalert:sandbox:patient");
        kv(w, "value", pid_);
        w.EndObject();
        w.EndArray();
        w.Key("active");
        w.Bool(true);
        w.Key("name");
        w.StartArray();
        w.StartObject();
        kv(w, "use", "official");
        kv(w, "family", family_);
        w.Key("given");
        w.StartArray();
        str(w, given_);
        w.EndArray();
        w.EndObject();
        w.EndArray();
        kv(w, "gender", gender_);
        kv(w, "birthDate", date_only(now - age_days * kDay));
        w.EndObject();
        return sb.GetString();
    }

    std::string pid_;
    std::string given_, family_, gender_;
    int min_age_ = 35, max_age_ = 88;
    std::vector<Observation> observations_;
    std::vector<Condition> conditions_;
};

// Resources the rules do not read (vitals, other labs, other conditions), and old mineral results
// outside every window (200+ days; the longest window is 180 days), so that filtering matters.
void Builder::vitals_and_background() {
    // One random draw per statement: the order of evaluation of function arguments is unspecified.
    const int weights = rng.chance(40) ? 2 : 1;
    for (int i = 0; i < weights; ++i) {
        const EpochSeconds t = days_ago(1, 400);
        const Quantity q = is_child() ? draw(20, 60, 1, "kg") : draw(48, 118, 1, "kg");
        result("weight", "vital-signs", kWeight, t, q);
    }
    if (rng.chance(40)) {
        const EpochSeconds t = days_ago(1, 400);
        const Quantity h = is_child() ? draw(115, 170, 0, "cm") : draw(150, 195, 0, "cm");
        const Quantity bmi = draw(18.5, 34, 1, "kg/m2");
        result("height", "vital-signs", kHeight, t, h);
        result("bmi", "vital-signs", kBmi, t, bmi);
    }
    if (rng.chance(40)) {
        const EpochSeconds t = days_ago(1, 200);
        const Quantity sys = draw(102, 168, 0, "mm[Hg]");
        const Quantity dia = draw(60, 98, 0, "mm[Hg]");
        Observation& bp = add_observation("bp", "vital-signs", kBpPanel, t, "final");
        bp.components.emplace_back(kSystolic, sys);
        bp.components.emplace_back(kDiastolic, dia);
    }
    if (rng.chance(30)) {
        const EpochSeconds t = days_ago(1, 200);
        const Quantity q = draw(54, 98, 0, "/min");
        result("hr", "vital-signs", kHeartRate, t, q);
    }
    if (rng.chance(30)) {
        const EpochSeconds t = days_ago(1, 120);
        const Quantity q = renal == Renal::esrd ? draw(8.4, 11.2, 1, "g/dL") : draw(12.0, 16.2, 1, "g/dL");
        result("hgb", "laboratory", kHemoglobin, t, q);
    }
    if (rng.chance(30)) {
        const EpochSeconds t = days_ago(1, 120);
        const Quantity q = draw(72, 140, 0, "mg/dL");
        result("glu", "laboratory", kGlucose, t, q);
    }
    if (rng.chance(25)) {
        const EpochSeconds t = days_ago(1, 120);
        const Quantity na = draw(135, 145, 0, "mmol/L");
        const Quantity k = renal == Renal::esrd ? draw(4.6, 5.9, 1, "mmol/L") : draw(3.5, 5.0, 1, "mmol/L");
        result("na", "laboratory", kSodium, t, na);
        result("k", "laboratory", kPotassium, t, k);
    }
    switch (renal) {
        case Renal::esrd:
            if (rng.chance(60)) creatinine(5.0, 11.0, days_ago(1, 90));
            break;
        case Renal::ckd4:
            if (rng.chance(50)) creatinine(2.5, 4.5, days_ago(1, 90));
            break;
        case Renal::ckd3:
            if (rng.chance(40)) creatinine(1.4, 2.4, days_ago(1, 90));
            break;
        case Renal::normal:
            if (rng.chance(20)) creatinine(0.6, 1.2, days_ago(1, 200));
            break;
    }
    if (rng.chance(15)) {
        const EpochSeconds t = days_ago(1, 120);
        const Quantity q = draw(40, 130, 0, "U/L");
        result("alp", "laboratory", kAlp, t, q);
    }
    if (rng.chance(25)) {
        const EpochSeconds old = days_ago(200, 600);
        calcium(kCaNormal, old);
        phosphate(kPNormal, old);
        albumin(kAlbNormal, old);
    }
    static const std::vector<Dx> kOther = {Dx::hypertension, Dx::diabetes_type_2, Dx::hyperlipidemia,     Dx::asthma,
                                           Dx::gerd,         Dx::depression,      Dx::osteoarthritis_knee};
    if (!is_child()) {
        const auto r = rng.below(100);
        const int n = r < 40 ? 0 : r < 80 ? 1 : 2;
        Dx previous = Dx::hypertension;
        for (int i = 0; i < n; ++i) {
            const bool hypertensive = renal == Renal::esrd && i == 0 && rng.chance(60);
            const Dx d = hypertensive ? Dx::hypertension : rng.pick(kOther);
            if (i == 1 && d == previous) continue;
            previous = d;
            dx(d);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Archetype pieces.

Dx lesion_any(Rng& r) {
    static const std::vector<Dx> k = {Dx::skin_ulcer, Dx::skin_ulcer,         Dx::skin_necrosis,
                                      Dx::gangrene,   Dx::livedo_reticularis, Dx::skin_nodule};
    return r.pick(k);
}
Dx open_lesion(Rng& r) {
    return r.chance(70) ? Dx::skin_ulcer : Dx::skin_necrosis;
}

void esrd(Builder& b, std::optional<Sys> sys = std::nullopt, bool strip_dot = false) {
    b.renal = Renal::esrd;
    CondOpts o;
    o.sys = sys;
    o.strip_dot = strip_dot;
    b.dx(Dx::esrd, o);
    // Dialysis patients often have an eGFR on record too: always below 15 here (it agrees with the diagnosis).
    if (b.rng.chance(40)) b.egfr(4, 14, b.days_ago(1, 150));
}

// Ca and P drawn together, maybe with a normal albumin (>= 4.0 g/dL: no correction).
void mineral_panel(Builder& b, const Band& ca, const Band& p, EpochSeconds t, bool albumin = true) {
    b.calcium(ca, t);
    b.phosphate(p, t);
    if (albumin && b.rng.chance(30)) b.albumin(kAlbNormal, t);
}

LabOpts conventional() {
    LabOpts o;
    o.units = Units::conventional;
    return o;
}
LabOpts si() {
    LabOpts o;
    o.units = Units::si;
    return o;
}
LabOpts with_status(const std::string& s) {
    LabOpts o;
    o.status = s;
    return o;
}
CondOpts with_clinical(const std::string& clinical, const std::string& verification, bool abated = false) {
    CondOpts o;
    o.clinical = clinical;
    o.verification = verification;
    o.abated = abated;
    return o;
}

struct ArchetypeDef {
    Archetype info;
    std::function<void(Builder&)> build;
};

constexpr std::string_view CS = "calciphylaxis-suspected";
constexpr std::string_view CD = "calciphylaxis-ulcer-differential";
constexpr std::string_view CR = "calciphylaxis-risk";
constexpr std::string_view CW = "calciphylaxis-wound-sepsis-risk";
constexpr std::string_view MC = "metastatic-calcification-risk";
constexpr std::string_view DW = "dystrophic-calcinosis-watch";
constexpr std::string_view CI = "calcinosis-infection-risk";
constexpr std::string_view CM = "calcinosis-metastatic-pattern";
constexpr std::string_view NM = "near-miss";
constexpr std::string_view HEALTHY = "healthy";

const std::vector<ArchetypeDef>& definitions() {
    static const std::vector<ArchetypeDef> defs = {
        // ---- calciphylaxis-suspected: ESRD + lesion + mineral abnormality, no calciphylaxis on record
        {{"cs-esrd-ulcer-high-pth",
          CS,
          "ESRD (SNOMED CT), skin ulcer, PTH above 9 x the upper reference limit (650-1500 pg/mL); calcium and "
          "phosphate normal",
          {CS},
          4},
         [](Builder& b) {
             esrd(b, Sys::sct);
             b.dx(Dx::skin_ulcer);
             const EpochSeconds t = b.recent();
             b.pth(kPthAboveDialysisRange, t);
             mineral_panel(b, kCaNormal, kPNormal, t);
         }},
        {{"cs-esrd-necrosis-caxp-suppresses-risk",
          CS,
          "ESRD (ICD-10-CM, with or without the dot), skin necrosis, Ca x P > 70 (and often high PTH): "
          "calciphylaxis-risk and metastatic-calcification-risk are suppressed",
          {CS},
          3},
         [](Builder& b) {
             esrd(b, Sys::icd10, b.rng.chance(50));
             b.dx(Dx::skin_necrosis);
             const EpochSeconds t = b.recent();
             mineral_panel(b, kCaHighNormal, kPVeryHigh, t);
             b.pth(b.rng.chance(60) ? kPthHigh : kPthNormal, t);
         }},
        {{"cs-esrd-gangrene-ionized-hypercalcemia",
          CS,
          "ESRD (ICD-9-CM), gangrene, ionized calcium above 1.32 mmol/L; total calcium, phosphate and PTH normal",
          {CS},
          3},
         [](Builder& b) {
             esrd(b, Sys::icd9);
             b.dx(Dx::gangrene);
             const EpochSeconds t = b.recent();
             b.ionized_calcium(kIonHigh, t);
             if (b.rng.chance(50)) mineral_panel(b, kCaNormal, kPNormal, t, false);
             b.pth(kPthNormal, t);
         }},
        {{"cs-egfr-livedo-hyperphosphatemia",
          CS,
          "eGFR below 15 (no ESRD diagnosis), livedo reticularis, phosphate above 4.5 mg/dL with Ca x P below 70",
          {CS},
          3},
         [](Builder& b) {
             b.renal = Renal::esrd;
             b.egfr(16, 28, b.days_ago(200, 500));
             b.egfr(5, 14, b.days_ago(1, 120));
             b.dx(Dx::livedo_reticularis);
             const EpochSeconds t = b.recent();
             mineral_panel(b, kCaNormal, kPHigh, t);
             b.pth(kPthNormal, t);
         }},
        {{"cs-esrd-nodule-hyperparathyroidism-dx",
          CS,
          "ESRD, skin or subcutaneous nodule, hyperparathyroidism diagnosis; labs normal",
          {CS},
          2},
         [](Builder& b) {
             esrd(b);
             b.dx(Dx::skin_nodule);
             b.dx(Dx::hyperparathyroidism);
             mineral_panel(b, kCaNormal, kPNormal, b.recent());
         }},
        {{"cs-esrd-lesion-albumin-corrected-calcium",
          CS,
          "ESRD, a calciphylaxis lesion, total calcium 10.0-10.4 mg/dL with albumin 2.5-3.0 g/dL within 48 h "
          "(corrected calcium above 10.5)",
          {CS},
          2},
         [](Builder& b) {
             esrd(b);
             b.dx(lesion_any(b.rng));
             const EpochSeconds t = b.recent();
             b.calcium(kCaForCorrection, t);
             b.albumin(kAlbLow, t - b.rng.between(0, 24 * 60) * kMinute);
             b.phosphate(kPNormal, t);
             b.pth(kPthNormal, t);
         }},
        {{"cs-esrd-lesion-differentials-on-record",
          CS,
          "ESRD, a calciphylaxis lesion, PTH above 9 x the upper reference limit, with vasculitis, panniculitis, "
          "primary hyperoxaluria or a protein C/S deficiency on record (named in the explanation)",
          {CS},
          2},
         [](Builder& b) {
             static const std::vector<Dx> k = {
                 Dx::vasculitis,           Dx::panniculitis,         Dx::primary_hyperoxaluria,
                 Dx::protein_c_deficiency, Dx::protein_s_deficiency, Dx::protein_c_or_s_deficiency};
             esrd(b);
             b.dx(lesion_any(b.rng));
             const Dx first = b.rng.pick(k);
             b.dx(first);
             const Dx second = b.rng.pick(k);
             if (second != first && b.rng.chance(40)) b.dx(second);
             const EpochSeconds t = b.recent();
             b.pth(kPthAboveDialysisRange, t);
             mineral_panel(b, kCaNormal, kPNormal, t);
         }},
        // ---- calciphylaxis-ulcer-differential: ESRD + skin ulcer + a mineral abnormality that is not strong
        {{"cd-esrd-ulcer-pth-within-dialysis-range",
          CD,
          "ESRD, a skin ulcer (diabetic foot, leg), PTH 150-540 pg/mL (above 65, within 9 x the upper reference "
          "limit) or a hyperparathyroidism diagnosis; calcium and phosphate normal: calciphylaxis in the "
          "differential, not suspected",
          {CD},
          3},
         [](Builder& b) {
             esrd(b);
             b.dx(Dx::skin_ulcer);
             if (b.rng.chance(30)) b.dx(Dx::diabetes_type_2);
             const EpochSeconds t = b.recent();
             if (b.rng.chance(70)) {
                 b.pth(kPthWithinDialysisRange, t);
             } else {
                 b.dx(Dx::hyperparathyroidism);
                 b.pth(kPthNormal, t);
             }
             mineral_panel(b, kCaNormal, kPNormal, t);
         }},
        // ---- calciphylaxis-risk: ESRD + Ca x P > 70 + hyperparathyroidism (metastatic risk suppressed)
        {{"cr-esrd-caxp-high-pth",
          CR,
          "ESRD, Ca x P > 70 in mg/dL, PTH high in pg/mL or ng/L: metastatic-calcification-risk suppressed",
          {CR},
          4},
         [](Builder& b) {
             esrd(b, b.rng.chance(50) ? std::optional<Sys>(Sys::sct) : std::nullopt);
             const EpochSeconds t = b.recent();
             b.calcium(kCaHighNormal, t, conventional());
             b.phosphate(kPVeryHigh, t, conventional());
             b.pth(kPthHigh, t - b.rng.between(0, 20) * kDay, conventional());
         }},
        {{"cr-esrd-icd10-nodot-si-units",
          CR,
          "ESRD as ICD-10-CM without the dot (N186), calcium and phosphate in mmol/L, PTH in pmol/L",
          {CR},
          3},
         [](Builder& b) {
             esrd(b, Sys::icd10, true);
             const EpochSeconds t = b.recent();
             b.calcium(kCaHighNormal, t, si());
             b.phosphate(kPVeryHigh, t, si());
             b.pth(kPthHigh, t, si());
         }},
        {{"cr-egfr-blood-calcium-hyperparathyroidism-dx",
          CR,
          "eGFR below 15, calcium in blood (49765-1), phosphate high, hyperparathyroidism diagnosis (no PTH result)",
          {CR},
          2},
         [](Builder& b) {
             b.renal = Renal::esrd;
             b.egfr(5, 14, b.days_ago(1, 150));
             b.dx(Dx::hyperparathyroidism);
             const EpochSeconds t = b.recent();
             LabOpts blood = conventional();
             blood.code = &kCaBlood;
             b.calcium(kCaHighNormal, t, blood);
             b.phosphate(kPVeryHigh, t + b.rng.between(0, 20 * 60) * kMinute);
         }},
        {{"cr-esrd-pth-above-assay-limit", CR, "ESRD, Ca x P > 70, PTH reported as '>2500 pg/mL'", {CR}, 1},
         [](Builder& b) {
             esrd(b);
             const EpochSeconds t = b.recent();
             mineral_panel(b, kCaHighNormal, kPVeryHigh, t);
             LabOpts o = conventional();
             o.comparator = ">";
             b.pth(Band{2500, 2500, 0, 0}, t, o);
         }},
        {{"cr-with-dermatomyositis", CR, "calciphylaxis risk in a patient who also has dermatomyositis", {CR, DW}, 1},
         [](Builder& b) {
             esrd(b);
             b.dx(Dx::dermatomyositis);
             const EpochSeconds t = b.recent();
             mineral_panel(b, kCaHighNormal, kPVeryHigh, t);
             b.pth(kPthHigh, t);
         }},
        // ---- calciphylaxis-wound-sepsis-risk: calciphylaxis on record + ulcer, necrosis, gangrene or sepsis
        {{"cw-calciphylaxis-ulcer",
          CW,
          "calciphylaxis (E83.59, E8359 or SNOMED CT 237900002) with a skin ulcer; ESRD and high PTH often on record "
          "(calciphylaxis-suspected does not fire: the diagnosis is known)",
          {CW},
          2},
         [](Builder& b) {
             b.dx(Dx::calciphylaxis);
             b.dx(Dx::skin_ulcer);
             if (b.rng.chance(70)) esrd(b);
             const EpochSeconds t = b.recent();
             if (b.rng.chance(70)) b.pth(kPthHigh, t);
             mineral_panel(b, kCaNormal, kPNormal, t);
         }},
        {{"cw-calciphylaxis-sepsis", CW, "calciphylaxis with sepsis or septic shock", {CW}, 2},
         [](Builder& b) {
             b.dx(Dx::calciphylaxis);
             b.dx(Dx::sepsis);
             if (b.rng.chance(50)) b.dx(b.rng.chance(50) ? Dx::livedo_reticularis : Dx::skin_nodule);
             if (b.rng.chance(60)) esrd(b);
             mineral_panel(b, kCaNormal, kPNormal, b.recent());
         }},
        {{"cw-calciphylaxis-gangrene-or-necrosis", CW, "calciphylaxis with gangrene or skin necrosis", {CW}, 2},
         [](Builder& b) {
             b.dx(Dx::calciphylaxis);
             b.dx(b.rng.chance(50) ? Dx::gangrene : Dx::skin_necrosis);
             if (b.rng.chance(60)) esrd(b);
         }},
        {{"cw-with-metastatic-calcification",
          CW,
          "known calciphylaxis with an ulcer, ESRD, Ca x P > 70 and high PTH: calciphylaxis-risk is blocked by the "
          "diagnosis, so metastatic-calcification-risk is not suppressed",
          {CW, MC},
          1},
         [](Builder& b) {
             b.dx(Dx::calciphylaxis);
             b.dx(Dx::skin_ulcer);
             esrd(b);
             const EpochSeconds t = b.recent();
             mineral_panel(b, kCaHighNormal, kPVeryHigh, t);
             b.pth(kPthHigh, t);
         }},
        // ---- metastatic-calcification-risk: Ca x P > 70 with hypercalcemia or hyperphosphatemia
        {{"mc-ckd4-hyperphosphatemia",
          MC,
          "CKD stage 4 (eGFR 16-29, not ESRD), Ca x P > 70 with high phosphate",
          {MC},
          3},
         [](Builder& b) {
             b.renal = Renal::ckd4;
             if (b.rng.chance(60)) b.dx(Dx::ckd_stage_4);
             b.egfr(16, 29, b.days_ago(1, 150));
             const EpochSeconds t = b.recent();
             mineral_panel(b, kCaHighNormal, kPVeryHigh, t);
             if (b.rng.chance(50)) b.pth(b.rng.chance(50) ? kPthHigh : kPthNormal, t);
         }},
        {{"mc-hypercalcemia-and-hyperphosphatemia",
          MC,
          "calcium above 11 mg/dL and phosphate above 6.6 mg/dL (Ca x P > 72)",
          {MC},
          2},
         [](Builder& b) {
             if (b.rng.chance(50)) b.egfr(45, 95, b.days_ago(1, 150));
             mineral_panel(b, kCaHigh, kPWithHighCa, b.recent());
         }},
        {{"mc-esrd-normal-pth",
          MC,
          "ESRD with Ca x P > 70 but normal PTH and no hyperparathyroidism: no calciphylaxis-risk, so "
          "metastatic-calcification-risk is not suppressed",
          {MC},
          2},
         [](Builder& b) {
             esrd(b);
             const EpochSeconds t = b.recent();
             mineral_panel(b, kCaHighNormal, kPVeryHigh, t);
             b.pth(kPthNormal, t);
         }},
        {{"mc-esrd-pth-undecided",
          MC,
          "ESRD with Ca x P > 70 and PTH '<80 pg/mL' (decides nothing about 65): no hyperparathyroidism",
          {MC},
          1},
         [](Builder& b) {
             esrd(b);
             const EpochSeconds t = b.recent();
             mineral_panel(b, kCaHighNormal, kPVeryHigh, t);
             LabOpts o = conventional();
             o.comparator = "<";
             b.pth(Band{80, 80, 0, 0}, t, o);
         }},
        {{"mc-hypercalcemia-phosphate-within-lab-range",
          MC,
          "calcium above 11 mg/dL; phosphate 6.6-7.2 mg/dL inside its lab's reference range (high 7.5): Ca x P > 70 "
          "with hypercalcemia only",
          {MC},
          1},
         [](Builder& b) {
             const EpochSeconds t = b.recent();
             b.calcium(kCaHigh, t);
             LabOpts o;
             o.custom_ref = &kPRefWide;
             b.phosphate(kPWithHighCa, t, o);
         }},
        // ---- dystrophic-calcinosis-watch: connective-tissue disease without calcinosis cutis
        {{"dw-dermatomyositis", DW, "dermatomyositis, adult or juvenile (a child)", {DW}, 3},
         [](Builder& b) {
             if (b.rng.chance(35)) {
                 b.child();
                 b.dx(Dx::juvenile_dermatomyositis);
             } else {
                 b.dx(Dx::dermatomyositis);
             }
             if (b.rng.chance(50)) mineral_panel(b, kCaNormal, kPNormal, b.recent());
         }},
        {{"dw-systemic-sclerosis", DW, "systemic sclerosis: diffuse, limited, CREST", {DW}, 3},
         [](Builder& b) {
             b.dx(Dx::systemic_sclerosis);
             if (b.rng.chance(50)) mineral_panel(b, kCaNormal, kPNormal, b.recent());
         }},
        {{"dw-mctd", DW, "mixed connective tissue disease (ICD-10-CM M35.1)", {DW}, 1},
         [](Builder& b) {
             b.dx(Dx::mctd);
             if (b.rng.chance(50)) mineral_panel(b, kCaNormal, kPNormal, b.recent());
         }},
        // ---- calcinosis-infection-risk: calcinosis (cutis or tumoral) with an open lesion
        {{"ci-calcinosis-cutis-open-lesion",
          CI,
          "calcinosis cutis with a skin ulcer or necrosis; calcium and phosphate normal",
          {CI},
          2},
         [](Builder& b) {
             b.dx(Dx::calcinosis_cutis);
             b.dx(open_lesion(b.rng));
             if (b.rng.chance(60)) mineral_panel(b, kCaNormal, kPNormal, b.recent());
         }},
        {{"ci-tumoral-calcinosis-open-lesion",
          CI,
          "tumoral calcinosis (ICD-9-CM 275.49) with an ulcer or necrosis; sometimes high phosphate, which does not "
          "make the calcinosis-cutis pattern rule fire",
          {CI},
          2},
         [](Builder& b) {
             b.dx(Dx::tumoral_calcinosis);
             b.dx(open_lesion(b.rng));
             const Band& p = b.rng.chance(40) ? kPHigh : kPNormal;
             mineral_panel(b, kCaNormal, p, b.recent());
         }},
        // ---- calcinosis-metastatic-pattern: calcinosis cutis with hypercalcemia or hyperphosphatemia
        {{"cm-calcinosis-hypercalcemia",
          CM,
          "calcinosis cutis with calcium above 10.5 mg/dL (total, or a reported albumin-corrected calcium)",
          {CM},
          2},
         [](Builder& b) {
             b.dx(Dx::calcinosis_cutis);
             const EpochSeconds t = b.recent();
             if (b.rng.chance(25))
                 b.corrected_calcium(kCorrectedCaHigh, t);
             else
                 b.calcium(kCaHigh, t);
             b.phosphate(kPNormal, t);
         }},
        {{"cm-calcinosis-hyperphosphatemia", CM, "calcinosis cutis with phosphate 5.0-6.5 mg/dL", {CM}, 2},
         [](Builder& b) {
             b.dx(Dx::calcinosis_cutis);
             mineral_panel(b, kCaNormal, kPHigh, b.recent());
         }},
        {{"cm-calcinosis-ionized-or-diagnosis",
          CM,
          "calcinosis cutis with a high ionized calcium, or a hypercalcemia or hyperphosphatemia diagnosis",
          {CM},
          1},
         [](Builder& b) {
             b.dx(Dx::calcinosis_cutis);
             const EpochSeconds t = b.recent();
             const auto r = b.rng.below(3);
             if (r == 0)
                 b.ionized_calcium(kIonHigh, t);
             else
                 b.dx(r == 1 ? Dx::hypercalcemia : Dx::hyperphosphatemia);
             mineral_panel(b, kCaNormal, kPNormal, t);
         }},
        {{"cm-calcinosis-phosphate-above-lab-range",
          CM,
          "calcinosis cutis, phosphate 4.2-4.4 mg/dL above its lab's reference high of 4.0 (below the 4.5 default)",
          {CM},
          1},
         [](Builder& b) {
             b.dx(Dx::calcinosis_cutis);
             const EpochSeconds t = b.recent();
             LabOpts o;
             o.custom_ref = &kPRefNarrow;
             b.phosphate(kPJustAboveNarrowRange, t, o);
             b.calcium(kCaNormal, t);
         }},
        {{"cm-calcinosis-with-systemic-sclerosis",
          CM,
          "systemic sclerosis with calcinosis cutis and high calcium or phosphate: dystrophic-calcinosis-watch does "
          "not "
          "fire once calcinosis is on record",
          {CM},
          1},
         [](Builder& b) {
             b.dx(Dx::systemic_sclerosis);
             b.dx(Dx::calcinosis_cutis);
             if (b.rng.chance(50))
                 mineral_panel(b, kCaHigh, kPNormal, b.recent(), false);
             else
                 mineral_panel(b, kCaNormal, kPHigh, b.recent());
         }},
        {{"ci-cm-open-calcinosis-abnormal-minerals",
          CI,
          "calcinosis cutis with an ulcer and high calcium or phosphate",
          {CI, CM},
          1},
         [](Builder& b) {
             b.dx(Dx::calcinosis_cutis);
             b.dx(Dx::skin_ulcer);
             if (b.rng.chance(50))
                 mineral_panel(b, kCaHigh, kPNormal, b.recent(), false);
             else
                 mineral_panel(b, kCaNormal, kPHigh, b.recent());
         }},
        // ---- near-misses: no rule may fire
        {{"nm-caxp-not-above-70",
          NM,
          "ESRD and high PTH, Ca x P 65-69.9 or exactly 70.0 (the threshold is strict); no lesion",
          {},
          2},
         [](Builder& b) {
             esrd(b);
             const EpochSeconds t = b.recent();
             double ca = 10.0, p = 7.0;
             if (b.rng.chance(70)) {
                 const auto c = b.rng.between(90, 94);  // tenths of mg/dL
                 const auto pt = b.rng.between((6500 + c - 1) / c, 6990 / c);
                 ca = static_cast<double>(c) / 10;
                 p = static_cast<double>(pt) / 10;
             }
             b.calcium(Band{ca, ca, 0, 0}, t, conventional());
             b.phosphate(Band{p, p, 0, 0}, t, conventional());
             b.pth(kPthHigh, t);
         }},
        {{"nm-egfr-not-below-15",
          NM,
          "eGFR exactly 15 or 16-22 (not ESRD), a calciphylaxis lesion, high PTH: no ESRD, no alert",
          {},
          2},
         [](Builder& b) {
             b.renal = Renal::ckd4;
             if (b.rng.chance(50)) b.dx(Dx::ckd_stage_4);
             if (b.rng.chance(40))
                 b.egfr(15, 15, b.days_ago(1, 120));
             else
                 b.egfr(16, 22, b.days_ago(1, 120));
             b.dx(lesion_any(b.rng));
             const EpochSeconds t = b.recent();
             b.pth(kPthHigh, t);
             mineral_panel(b, kCaNormal, kPNormal, t);
         }},
        {{"nm-labs-just-outside-window",
          NM,
          "ESRD and a lesion; Ca x P > 70 drawn 90 days + 1-48 h ago and high PTH 180 days + 1-72 h ago: outside "
          "their windows",
          {},
          2},
         [](Builder& b) {
             esrd(b);
             b.dx(lesion_any(b.rng));
             const EpochSeconds tp = b.now - 90 * kDay - b.rng.between(60, 48 * 60) * kMinute;
             b.calcium(kCaHighNormal, tp);
             b.phosphate(kPVeryHigh, tp);
             b.pth(kPthHigh, b.now - 180 * kDay - b.rng.between(60, 72 * 60) * kMinute);
         }},
        {{"nm-labs-not-final",
          NM,
          "ESRD and a lesion; the high calcium, phosphate and PTH are preliminary, registered, cancelled or unknown",
          {},
          2},
         [](Builder& b) {
             static const std::vector<std::string> k = {"preliminary", "preliminary", "registered", "cancelled",
                                                        "unknown"};
             esrd(b);
             b.dx(lesion_any(b.rng));
             const EpochSeconds t = b.days_ago(0.1, 3);
             b.calcium(kCaHighNormal, t, with_status(b.rng.pick(k)));
             b.phosphate(kPVeryHigh, t, with_status(b.rng.pick(k)));
             b.pth(kPthHigh, t, with_status(b.rng.pick(k)));
         }},
        {{"nm-labs-entered-in-error",
          NM,
          "calcinosis cutis; high calcium and phosphate entered in error, sometimes re-issued as normal corrected "
          "results",
          {},
          1},
         [](Builder& b) {
             b.dx(Dx::calcinosis_cutis);
             const EpochSeconds t = b.recent();
             b.calcium(kCaHigh, t, with_status("entered-in-error"));
             b.phosphate(kPVeryHigh, t, with_status("entered-in-error"));
             if (b.rng.chance(50)) {
                 b.calcium(kCaNormal, t + kHour, with_status("corrected"));
                 b.phosphate(kPNormal, t + kHour, with_status("corrected"));
             }
         }},
        {{"nm-condition-refuted-or-entered-in-error",
          NM,
          "the diagnosis that would fire is refuted or entered in error: ESRD (with a lesion and high PTH), "
          "calciphylaxis (with sepsis or an ulcer), calcinosis cutis (with an ulcer) or a connective-tissue disease",
          {},
          2},
         [](Builder& b) {
             const auto v = b.rng.below(4);
             const bool refuted = b.rng.chance(50);
             const CondOpts off = refuted ? with_clinical("active", "refuted") : with_clinical("", "entered-in-error");
             if (v == 0) {
                 b.dx(Dx::esrd, off);
                 b.dx(lesion_any(b.rng));
                 const EpochSeconds t = b.recent();
                 b.pth(kPthHigh, t);
                 mineral_panel(b, kCaNormal, kPNormal, t);
             } else if (v == 1) {
                 b.dx(Dx::calciphylaxis, off);
                 b.dx(b.rng.chance(50) ? Dx::sepsis : Dx::skin_ulcer);
             } else if (v == 2) {
                 b.dx(Dx::calcinosis_cutis, off);
                 b.dx(open_lesion(b.rng));
             } else {
                 static const std::vector<Dx> k = {Dx::dermatomyositis, Dx::systemic_sclerosis, Dx::mctd};
                 b.dx(b.rng.pick(k), off);
             }
         }},
        {{"nm-condition-resolved",
          NM,
          "the diagnosis that would fire is resolved, inactive or in remission: ESRD after a kidney transplant (eGFR "
          "45-75), a connective-tissue disease, calcinosis cutis with an ulcer, calciphylaxis with gangrene",
          {},
          2},
         [](Builder& b) {
             static const std::vector<std::string> k = {"resolved", "inactive", "remission"};
             const auto v = b.rng.below(4);
             const std::string status = b.rng.pick(k);
             const CondOpts off = with_clinical(status, "confirmed", b.rng.chance(70));
             if (v == 0) {
                 b.dx(Dx::esrd, with_clinical("resolved", "confirmed", true));
                 b.dx(Dx::kidney_transplant_status);
                 b.dx(lesion_any(b.rng));
                 const EpochSeconds t = b.recent();
                 b.egfr(45, 75, t);
                 b.pth(kPthHigh, t);
             } else if (v == 1) {
                 static const std::vector<Dx> ctd = {Dx::dermatomyositis, Dx::systemic_sclerosis, Dx::mctd};
                 b.dx(b.rng.pick(ctd), off);
             } else if (v == 2) {
                 b.dx(Dx::calcinosis_cutis, off);
                 b.dx(Dx::skin_ulcer);
             } else {
                 b.dx(Dx::calciphylaxis, off);
                 b.dx(Dx::gangrene);
             }
         }},
        {{"nm-codes-outside-value-sets",
          NM,
          "codes the mapping deliberately leaves out: ESRD with renal transplant (SCT 236436003), ICD-9-CM 440.23 "
          "(an ulcer, not calciphylaxis) with sepsis, E83.39 with calcinosis cutis, creatinine without eGFR",
          {},
          2},
         [](Builder& b) {
             const auto v = b.rng.below(4);
             if (v == 0) {
                 b.dx(Dx::esrd_with_transplant);
                 b.dx(lesion_any(b.rng));
                 const EpochSeconds t = b.recent();
                 b.egfr(30, 60, t);
                 b.pth(kPthHigh, t);
             } else if (v == 1) {
                 b.dx(Dx::atherosclerosis_with_ulcer);
                 b.dx(Dx::sepsis);
             } else if (v == 2) {
                 b.dx(Dx::phosphorus_disorder_other);
                 b.dx(Dx::calcinosis_cutis);
                 mineral_panel(b, kCaNormal, kPNormal, b.recent());
             } else {
                 b.renal = Renal::esrd;  // dialysis-range labs, but no ESRD code and no eGFR
                 b.dx(Dx::skin_ulcer);
                 const EpochSeconds t = b.recent();
                 b.creatinine(6.0, 10.0, t);
                 b.pth(kPthHigh, t);
             }
         }},
        {{"nm-ionized-calcium-not-in-product",
          NM,
          "ESRD, high PTH, phosphate 7.5-9 mg/dL, and only an ionized calcium (never used in Ca x P): no lesion, no "
          "Ca x P",
          {},
          1},
         [](Builder& b) {
             esrd(b);
             const EpochSeconds t = b.recent();
             b.ionized_calcium(kIonNormal, t);
             b.phosphate(kPVeryHigh, t);
             b.pth(kPthHigh, t);
         }},
        {{"nm-calcium-phosphate-not-paired",
          NM,
          "calcium 9.6-10.4 and phosphate 7.5-9 mg/dL drawn 25-60 h apart: no pair within 24 h, no Ca x P",
          {},
          1},
         [](Builder& b) {
             const EpochSeconds t = b.days_ago(5, 60);
             b.calcium(kCaHighNormal, t);
             b.phosphate(kPVeryHigh, t - b.rng.between(25 * 60, 60 * 60) * kMinute);
         }},
        {{"nm-future-dated-labs",
          NM,
          "ESRD and a lesion; high calcium, phosphate and PTH dated 26 h to 6 days after now (not counted)",
          {},
          1},
         [](Builder& b) {
             esrd(b);
             b.dx(lesion_any(b.rng));
             const EpochSeconds t = b.now + b.rng.between(26 * 60, 6 * 24 * 60) * kMinute;
             b.calcium(kCaHighNormal, t);
             b.phosphate(kPVeryHigh, t);
             b.pth(kPthHigh, t);
         }},
        {{"nm-calcinosis-normal-minerals",
          NM,
          "calcinosis cutis (often with a connective-tissue disease) and normal calcium and phosphate, some at "
          "10.2-10.4 "
          "mg/dL with normal albumin (no correction): the dystrophic pattern, no alert",
          {},
          2},
         [](Builder& b) {
             b.dx(Dx::calcinosis_cutis);
             if (b.rng.chance(60)) b.dx(b.rng.chance(50) ? Dx::systemic_sclerosis : Dx::dermatomyositis);
             const EpochSeconds t = b.recent();
             if (b.rng.chance(50)) {
                 b.calcium(kCaUpperNormal, t);
                 b.albumin(kAlbNormal, t);
             } else {
                 b.calcium(kCaNormal, t);
             }
             b.phosphate(kPNormal, t);
         }},
        {{"nm-pediatric-phosphate-range",
          NM,
          "a child with juvenile dermatomyositis and calcinosis cutis; phosphate 5.0-5.8 mg/dL inside the pediatric "
          "reference range (high 6.5)",
          {},
          1},
         [](Builder& b) {
             b.child();
             b.dx(Dx::juvenile_dermatomyositis);
             b.dx(Dx::calcinosis_cutis);
             const EpochSeconds t = b.recent();
             LabOpts o;
             o.custom_ref = &kPRefPediatric;
             b.phosphate(kPPediatric, t, o);
             b.calcium(kCaNormal, t);
         }},
        {{"nm-lesion-without-esrd",
          NM,
          "a calciphylaxis lesion with high PTH and phosphate 5-6.5 mg/dL but no ESRD (eGFR 35-75 or none)",
          {},
          1},
         [](Builder& b) {
             b.dx(lesion_any(b.rng));
             const EpochSeconds t = b.recent();
             if (b.rng.chance(50)) b.egfr(35, 75, t);
             b.pth(kPthHigh, t);
             mineral_panel(b, kCaNormal, kPHigh, t);
         }},
        // ---- healthy: no finding
        {{"healthy-normal-labs", HEALTHY, "normal calcium, phosphate, albumin, PTH and eGFR; vitals", {}, 18},
         [](Builder& b) {
             const EpochSeconds t = b.days_ago(1, 200);
             b.calcium(kCaNormal, t);
             b.phosphate(kPNormal, t);
             if (b.rng.chance(60)) b.albumin(kAlbNormal, t);
             if (b.rng.chance(30)) b.pth(kPthNormal, t);
             if (b.rng.chance(70)) b.egfr(60, 110, t);
         }},
        {{"healthy-unrelated-conditions",
          HEALTHY,
          "hypertension, type 2 diabetes, asthma, hyperlipidemia, reflux, depression or knee osteoarthritis; no "
          "mineral "
          "abnormality",
          {},
          10},
         [](Builder& b) {
             static const std::vector<Dx> k = {
                 Dx::hypertension, Dx::diabetes_type_2, Dx::hyperlipidemia,     Dx::asthma,
                 Dx::gerd,         Dx::depression,      Dx::osteoarthritis_knee};
             b.dx(b.rng.pick(k));
             if (b.rng.chance(50)) mineral_panel(b, kCaNormal, kPNormal, b.days_ago(1, 300));
         }},
        {{"healthy-ckd-stage-3",
          HEALTHY,
          "CKD stage 3 (eGFR 30-59), normal calcium and phosphate, PTH normal or mildly high (no rule without ESRD)",
          {},
          8},
         [](Builder& b) {
             b.renal = Renal::ckd3;
             b.dx(Dx::ckd_stage_3);
             const EpochSeconds t = b.days_ago(1, 150);
             b.egfr(30, 59, t);
             mineral_panel(b, kCaNormal, kPNormal, t);
             if (b.rng.chance(60)) b.pth(b.rng.chance(50) ? kPthMildlyHigh : kPthNormal, t);
         }},
        {{"healthy-vitals-only", HEALTHY, "vital signs and unrelated labs only", {}, 8}, [](Builder&) {}},
    };
    return defs;
}

}  // namespace

const std::vector<Archetype>& archetypes() {
    static const std::vector<Archetype> list = [] {
        std::vector<Archetype> v;
        for (const auto& d : definitions()) v.push_back(d.info);
        return v;
    }();
    return list;
}

unsigned total_archetype_weight() {
    static const unsigned total = [] {
        unsigned t = 0;
        for (const auto& d : definitions()) t += d.info.weight;
        return t;
    }();
    return total;
}

CohortGenerator::CohortGenerator(std::uint64_t seed, EpochSeconds now) : seed_(seed), now_(now) {}

SyntheticPatient CohortGenerator::patient(std::size_t index) const {
    const auto& defs = definitions();
    const unsigned total = total_archetype_weight();
    // The deck of this block: each archetype `weight` times, shuffled (Fisher-Yates) by the block's stream.
    std::vector<std::uint16_t> deck;
    deck.reserve(total);
    for (std::size_t i = 0; i < defs.size(); ++i)
        for (unsigned k = 0; k < defs[i].info.weight; ++k) deck.push_back(static_cast<std::uint16_t>(i));
    Rng shuffle(deck_stream(seed_, index / total));
    for (std::size_t i = deck.size() - 1; i > 0; --i)
        std::swap(deck[i], deck[static_cast<std::size_t>(shuffle.below(i + 1))]);
    const ArchetypeDef& def = defs[deck[index % total]];

    Builder b(patient_stream(seed_, index), now_, "syn-" + std::to_string(seed_) + "-" + std::to_string(index));
    def.build(b);
    b.vitals_and_background();
    return b.finish(index, std::string(def.info.name), def.info.expected);
}

std::vector<SyntheticPatient> generate_cohort(std::size_t patients, std::uint64_t seed, EpochSeconds now) {
    CohortGenerator g(seed, now);
    std::vector<SyntheticPatient> out;
    out.reserve(patients);
    for (std::size_t i = 0; i < patients; ++i) out.push_back(g.patient(i));
    return out;
}

std::string resource_urn(std::string_view type, std::string_view id) {
    Poco::SHA1Engine sha1;
    static const Poco::UUID ns =
        Poco::UUIDGenerator::defaultGenerator().createFromName(Poco::UUID::uri(), "urn:calcalert:sandbox", sha1);
    const std::string name = std::string(type) + "/" + std::string(id);
    return "urn:uuid:" + Poco::UUIDGenerator::defaultGenerator()
                             .createFromName(ns, name, sha1, Poco::UUID::UUID_NAME_BASED_SHA1)
                             .toString();
}

void write_ndjson(const SyntheticPatient& patient, std::ostream& patients, std::ostream& observations,
                  std::ostream& conditions) {
    for (const auto& r : patient.resources) {
        std::ostream& out = r.type == "Patient" ? patients : r.type == "Observation" ? observations : conditions;
        out << r.json << '\n';
    }
}

TransactionBundleWriter::TransactionBundleWriter(std::ostream& out) : out_(out) {
    out_ << R"({"resourceType":"Bundle","type":"transaction","entry":[)";
}

void TransactionBundleWriter::add(const SyntheticPatient& patient) {
    if (finished_) throw std::logic_error("TransactionBundleWriter: add() after finish()");
    const std::string patient_urn = resource_urn("Patient", patient.id);
    // Every Observation and Condition was rendered by render_observation / render_condition with this
    // exact subject element; it is swapped for the patient's urn:uuid. Ids and urns need no escaping.
    const std::string subject = R"("subject":{"reference":"Patient/)" + patient.id + R"("})";
    const std::string urn_subject = R"("subject":{"reference":")" + patient_urn + R"("})";
    std::string entry;
    for (const auto& r : patient.resources) {
        entry.clear();
        entry += entries_ == 0 ? "\n" : ",\n";
        entry += R"({"fullUrl":")";
        entry += r.type == "Patient" ? patient_urn : resource_urn(r.type, r.id);
        entry += R"(","resource":)";
        if (r.type == "Patient") {
            entry += r.json;
        } else {
            const auto at = r.json.find(subject);
            if (at == std::string::npos)
                throw std::logic_error("synthetic " + r.type + "/" + r.id + " has no subject Patient/" + patient.id);
            entry.append(r.json, 0, at);
            entry += urn_subject;
            entry.append(r.json, at + subject.size(), std::string::npos);
        }
        entry += R"(,"request":{"method":"PUT","url":")";
        entry += r.type;
        entry += '/';
        entry += r.id;
        entry += R"("}})";
        out_ << entry;
        ++entries_;
    }
}

void TransactionBundleWriter::finish() {
    if (finished_) return;
    out_ << "\n]}\n";
    finished_ = true;
}

std::string transaction_bundle(const std::vector<SyntheticPatient>& batch) {
    std::ostringstream out;
    TransactionBundleWriter w(out);
    for (const auto& p : batch) w.add(p);
    w.finish();
    return out.str();
}

ExpectedWriter::ExpectedWriter(std::ostream& out, EpochSeconds now, std::uint64_t seed) : out_(out) {
    out_ << R"({"now":")" << fhir::format_datetime(now) << R"(","seed":)" << seed << R"(,"patients":[)";
}

void ExpectedWriter::add(const SyntheticPatient& patient) {
    if (finished_) throw std::logic_error("ExpectedWriter: add() after finish()");
    rapidjson::StringBuffer sb;
    Writer w(sb);
    w.StartObject();
    kv(w, "patient", patient.reference());
    kv(w, "name", patient.name);
    kv(w, "archetype", patient.archetype);
    w.Key("expect");
    w.StartArray();
    for (const auto& e : patient.expected) str(w, e);
    w.EndArray();
    w.EndObject();
    out_ << (count_ == 0 ? "\n" : ",\n") << sb.GetString();
    ++count_;
}

void ExpectedWriter::finish() {
    if (finished_) return;
    out_ << "\n]}\n";
    finished_ = true;
}

}  // namespace calcalert::sandbox
