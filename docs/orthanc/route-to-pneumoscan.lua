-- Orthanc auto-routing: send every chest radiograph that arrives to pneumoscan's DICOM node.
--
-- Goes with orthanc.json's "DicomModalities" entry "pneumoscan" and "LuaScripts" line.
-- CR and DX films go out; pneumoscan's own results come back as SR and OT (Secondary Capture)
-- objects, so they are never routed again. Orthanc queues each send as a job and retries it
-- per its own settings; the node acknowledges a film only once it is safely on its disk.
-- (pneumoscan's test suite loads this very file into a real Orthanc.)

function OnStoredInstance(instanceId, tags, metadata, origin)
   local modality = tags['Modality']
   if modality == 'CR' or modality == 'DX' then
      -- To route chest films only, where the modality fills BodyPartExamined:
      -- if tags['BodyPartExamined'] ~= 'CHEST' then return end
      SendToModality(instanceId, 'pneumoscan')
   end
end
